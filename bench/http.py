"""Suite "http": HTTP batches and load tests through the running stack, beside the anchors.

One private nginx (1 worker, a 512-byte file, access log off, keep-alive unlimited) serves
everything. Per run, interleaved so drift hits every side alike:

* batch — 20,000 GETs with ``submit_http_batch`` through the stack, timed from submit to the
  merged summary (rows persisted): first with ``lewis up``'s one io process (the task
  system's cost per process), then with a second ``lewis worker io`` added (2 io processes),
  each beside ``bench/rawhttp.py``: one aiohttp process, 100 coroutines, limit 100;
* load — ``submit_loadtest -c 100 -d 10s --workers 2`` beside ``wrk -t2 -c100 -d10s`` and
  locust (FastHttpUser, 100 users, headless, 1 process);
* latency at the same offered load — our open loop at the rate our closed loop reached, and
  at half of it, beside wrk paced to that rate (fixed per-connection delay in a Lua script;
  wrk has no open loop, so its achieved rate is reported too). Ours is given twice: from each
  request's intended send (the product's figure, no coordinated omission) and from its actual
  send (the run's service-time histogram), which is how wrk times its requests; at half the
  rate also from two plain processes running the same load generator without Celery
  (``bench/openloop.py``), which separates the task system's share from the client's own;
* CPU per URL of every process during the batches (io workers, nginx, the rest of the stack;
  the raw script's client), and from it the ceiling this machine's cores put on a batch;
* last, the one-process batch again on a second stack with ``http.row_writer=true`` (rows
  stored by a helper process beside the io process), beside raw aiohttp.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .harness import LOGS, ROOT, median
from .run import machine

BATCH = 20_000
LIMIT = 100
DURATION = 10.0
PAGE = "index.html"


class Nginx(NamedTuple):
    url: str
    pid: int  # the master; its worker is its child


@contextlib.contextmanager
def nginx(tmp: Path) -> Iterator[Nginx]:
    """A private nginx on a free loopback port serving a 512-byte file."""
    from lewis_tasks.infra.redis_server import free_port

    root = tmp / "nginx"
    (root / "www").mkdir(parents=True)
    (root / "www" / PAGE).write_bytes(bytes(range(256)) * 2)
    # nginx started by root serves as "nobody": let it reach the file (and nothing else)
    for path, mode in (
        (tmp, 0o711),
        (root, 0o711),
        (root / "www", 0o755),
        (root / "www" / PAGE, 0o644),
    ):
        path.chmod(mode)
    port = free_port()
    temps = " ".join(
        f"{kind}_temp_path {root / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (root / "nginx.conf").write_text(f"""
worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  {temps}
  server {{ listen 127.0.0.1:{port}; root {root / "www"}; }}
}}
""")
    proc = subprocess.Popen(
        [
            "nginx",
            "-p",
            str(root),
            "-c",
            str(root / "nginx.conf"),
            "-e",
            str(root / "error.log"),
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/{PAGE}"
    try:
        _wait_http(url)
        yield Nginx(url, proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (none when it is gone, or not on Linux)."""
    try:
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) used so far by ``pid`` and its children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone, or not Linux
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children(pid))


class CpuMeter:
    """CPU seconds that given processes (with their children) use between start and stop."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.before = self._read()

    def _read(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()}

    def per_url(self, urls: int) -> dict[str, float]:
        """µs of CPU per URL for each group since this meter was made."""
        after = self._read()
        return {
            f"{name}_cpu_us": (after[name] - self.before[name]) * 1e6 / urls for name in self.pids
        }


def _wait_http(url: str, timeout: float = 10.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310  (loopback only)
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Stack:
    """A running ``lewis up --detach`` in a private home; io workers can be added to it."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.lewis = [sys.executable, "-m", "lewis_tasks.cli"]
        self.extra: list[subprocess.Popen[bytes]] = []
        self.io_pids: list[int] = []
        self.supervisor = 0  # `lewis up`: its children are the stack's processes

    def other_pids(self) -> list[int]:
        """Every process `lewis up` runs but the io worker: cpu and control workers, beat,
        Flower, the embedded Redis (:func:`cpu_seconds` adds their children)."""
        return [pid for pid in children(self.supervisor) if pid not in self.io_pids]

    def add_io_worker(self) -> int:
        """Start one more ``lewis worker io`` and wait until it answers; its pid."""
        from lewis_tasks.infra.celery_app import app

        LOGS.mkdir(parents=True, exist_ok=True)
        n = len(self.io_pids) + 1
        with open(LOGS / f"http-io{n}.log", "wb") as log:
            proc = subprocess.Popen(
                [*self.lewis, "worker", "io", "-n", f"io-{n}@%h"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.extra.append(proc)
        _wait_io_workers(app, n)
        self.io_pids.append(proc.pid)
        return proc.pid


@contextlib.contextmanager
def stack(
    tmp: Path, name: str = "stack", overrides: dict[str, str] | None = None
) -> Iterator[Stack]:
    """``lewis up --detach`` (one io process) in a private home ``tmp/name``, with ``overrides``
    (``LEWIS_…`` settings) in its environment; more io workers on demand.

    This process's settings and Celery app are pointed at that stack for the submits.
    """
    from lewis_tasks.infra import config
    from lewis_tasks.infra.celery_app import app, configure_app
    from lewis_tasks.infra.redis_client import reset_clients

    home = tmp / name
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEWIS_")}
    env.update(
        {
            "LEWIS_STACK_HOME": str(home),
            "PYTHONPATH": str(ROOT),
            # the anchor's limit: 100 connections per process, none per host
            "LEWIS_NETWORK_MAX_CONNECTIONS": str(LIMIT),
            "LEWIS_NETWORK_LIMIT_PER_HOST": "0",
            # one io process to start with (`lewis up` now starts one per core): the second is
            # added by add_io_worker, and every io process is one the meters count
            "LEWIS_SCALING_IO_MIN_WORKERS": "1",
            **(overrides or {}),
        }
    )
    running = Stack(home, env)
    subprocess.run(
        [*running.lewis, "up", "--detach"], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL
    )
    previous = config.get_settings()
    try:
        settings = config.load_settings(env=env)
        config.set_settings(settings)
        reset_clients()
        configure_app(app, settings)
        _wait_io_workers(app, 1)
        info = config.read_stack_file(home) or {}
        running.supervisor = int(info["supervisor_pid"])
        running.io_pids.append(int(info["processes"]["io"]))
        yield running
    finally:
        for proc in running.extra:
            proc.terminate()
        for proc in running.extra:
            proc.wait(30)
        subprocess.run(
            [*running.lewis, "down"], env=env, cwd=ROOT, check=False, stdout=subprocess.DEVNULL
        )
        config.set_settings(previous)
        reset_clients()
        configure_app(app, previous)


def _wait_io_workers(app: Any, count: int, timeout: float = 60.0) -> None:
    from lewis_tasks.infra.broker import wait_for_workers

    wait_for_workers(
        app,
        lambda names: sum(n.split("@")[0].split("-")[0] == "io" for n in names) >= count,
        timeout,
    )


def bench_batch(url: str, cpu: dict[str, list[int]] | None = None) -> dict[str, Any]:
    from lewis_tasks.producer.http import submit_http_batch

    meter = CpuMeter(cpu or {})
    began = time.perf_counter()
    handle = submit_http_batch([url] * BATCH)
    summary = handle.wait(timeout=600)
    seconds = time.perf_counter() - began
    used = meter.per_url(BATCH)
    if summary["ok"] != BATCH:
        raise RuntimeError(f"batch: {summary['failed']} of {BATCH} failed: {summary['errors']}")
    return {
        "rps": BATCH / seconds,
        "seconds": seconds,
        "chunks": summary["chunks"],
        "processes": len(summary["processes"]),
        "p50_ms": summary["latency_ms"]["p50_ms"],
        "p99_ms": summary["latency_ms"]["p99_ms"],
        **used,
    }


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _raw(url: str, count: int) -> tuple[dict[str, Any], float]:
    before = _children_cpu()
    out = subprocess.run(
        [sys.executable, "-m", "bench.rawhttp", url, str(count), "--limit", str(LIMIT)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout), _children_cpu() - before


def bench_raw(url: str, cpu: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """The raw script; its client CPU per URL leaves out its start-up (a 1-URL run's CPU)."""
    _, startup = _raw(url, 1)
    meter = CpuMeter(cpu or {})
    data, used = _raw(url, BATCH)
    if data["ok"] != BATCH:
        raise RuntimeError(f"raw aiohttp: {data['errors']} errors")
    return {
        "rps": data["rps"],
        "seconds": data["seconds"],
        "client_cpu_us": max(0.0, used - startup) * 1e6 / BATCH,
        **meter.per_url(BATCH),
    }


def bench_loadtest(url: str, rate: float | None = None) -> dict[str, Any]:
    from lewis_tasks.producer.http import submit_loadtest

    handle = submit_loadtest(url, concurrency=LIMIT, duration=DURATION, rate=rate, workers=2)
    result = handle.wait(timeout=DURATION + 120)
    return {
        **_latencies(result),
        "requests": result["requests"],
        "errors": sum(result["errors"].values()),
        "processes": len(result["processes"]),
        "handed_back": result.get("handed_back", 0),
    }


def bench_plain(url: str, rate: float, processes: int = 2) -> dict[str, Any]:
    """``bench/openloop.py`` in ``processes`` plain processes started together, the rate and
    LIMIT connections split between them: the load generator without Celery."""
    from lewis_tasks.domain.loadgen import LoadResult

    start_at = time.time() + 3.0  # imports and warm-up come first
    argv = [
        sys.executable,
        "-m",
        "bench.openloop",
        url,
        str(rate / processes),
        str(LIMIT // processes),
        str(DURATION),
        str(start_at),
    ]
    procs = [
        subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    parts = [json.loads(proc.communicate(timeout=DURATION + 60)[0]) for proc in procs]
    return _latencies(LoadResult.merge(LoadResult.from_dict(p) for p in parts).to_dict())


def _latencies(result: dict[str, Any]) -> dict[str, Any]:
    """rps, and p50/p99 from the intended and from the actual send, of a load test result."""
    lat, service = result["latency_ms"], result["service_ms"]
    return {
        "rps": result["rps"],
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "service_p50_ms": service["p50_ms"],
        "service_p99_ms": service["p99_ms"],
    }


_WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def bench_wrk(url: str, connections: int = LIMIT, delay_ms: int | None = None) -> dict[str, Any]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{DURATION:.0f}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if delay_ms is not None:  # each connection waits this long before each request
            script.write(f"function delay()\n  return {delay_ms}\nend\n")
            argv += ["-s", script.name]
    try:
        out = subprocess.run([*argv, url], check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(script.name)
    latency = {f"p{p}_ms": float(v) * _UNIT_MS[u] for p, v, u in _WRK_LATENCY.findall(out)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, **latency}


def bench_locust(url: str, tmp: Path) -> dict[str, Any]:
    locust = shutil.which("locust", path=str(Path(sys.executable).parent))
    if locust is None:
        return {"rps": float("nan"), "missing": True}
    locustfile = tmp / "locustfile.py"
    path = "/" + url.split("/", 3)[3]
    locustfile.write_text(
        "from locust import FastHttpUser, task\n\n\n"
        "class Hammer(FastHttpUser):\n"
        f"    @task\n    def page(self):\n        self.client.get({path!r})\n"
    )
    prefix = tmp / "locust"
    host = url.split("/" + PAGE)[0]
    subprocess.run(
        [
            locust,
            "-f",
            str(locustfile),
            "--headless",
            "-u",
            str(LIMIT),
            "-r",
            str(LIMIT),
            "-t",
            f"{DURATION:.0f}s",
            "--host",
            host,
            "--csv",
            str(prefix),
            "--only-summary",
            "--loglevel",
            "WARNING",
        ],
        check=True,
        capture_output=True,
        cwd=tmp,
    )
    import csv

    with open(f"{prefix}_stats.csv") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    total = rows["Aggregated"]
    return {
        "rps": float(total["Requests/s"]),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
        "failures": int(total["Failure Count"]),
    }


def run(runs: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {}

    def record(name: str, value: dict[str, Any]) -> dict[str, Any]:
        results.setdefault(name, []).append(value)
        shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in value.items()}
        print(f"  {name:<14} {json.dumps(shown)}", flush=True)
        return value

    with tempfile.TemporaryDirectory(prefix="lewis-bench-http-") as tmp_name:
        tmp = Path(tmp_name)
        with nginx(tmp) as server:
            url = server.url
            raw_cpu = {"nginx": [server.pid]}
            with stack(tmp) as running:
                bench_batch(url)  # warm-up: imports, sessions, connections, DB
                bench_raw(url)
                # CPU per URL, by process group: what caps a 2-core machine (see render)
                ours_cpu = {
                    "io": running.io_pids,
                    "nginx": [server.pid],
                    "rest": running.other_pids(),
                }
                for _ in range(runs):  # the task system's cost: one io process beside raw aiohttp
                    record("batch_one", bench_batch(url, ours_cpu))
                    record("batch_raw_one", bench_raw(url, raw_cpu))
                running.add_io_worker()
                bench_batch(url)  # warm-up of the second process
                for _ in range(runs):
                    record("batch_ours", bench_batch(url, ours_cpu))
                    record("batch_raw", bench_raw(url, raw_cpu))
                    ours = record("load_ours", bench_loadtest(url))
                    record("load_wrk", bench_wrk(url))
                    record("load_locust", bench_locust(url, tmp))
                    for name, rate in (
                        ("paced", round(ours["rps"])),
                        ("half", round(ours["rps"] / 2)),
                    ):
                        record(f"{name}_ours", {**bench_loadtest(url, rate=rate), "offered": rate})
                        # wrk: 100 connections, each pausing d ms before each request, d set so
                        # that 100 / (d + ~0.3 ms) ≈ the offered rate
                        delay = max(1, round(LIMIT * 1000 / rate - 0.3))
                        record(
                            f"{name}_wrk",
                            {**bench_wrk(url, delay_ms=delay), "offered": rate, "delay_ms": delay},
                        )
                        if name == "half":  # the same generator in plain processes: no Celery
                            record("half_plain", {**bench_plain(url, rate), "offered": rate})
                io_processes = len(running.io_pids)
            # the same one-process batch with the rows stored by a writer process beside it
            with stack(tmp, "stack-writer", {"LEWIS_HTTP_ROW_WRITER": "true"}) as writing:
                bench_batch(url)
                writer_cpu = {
                    "io": writing.io_pids,
                    "nginx": [server.pid],
                    "rest": writing.other_pids(),
                }
                for _ in range(runs):
                    record("batch_writer", bench_batch(url, writer_cpu))
                    record("batch_raw_writer", bench_raw(url, raw_cpu))
    return {
        "machine": machine(),
        "runs": runs,
        "io_processes": io_processes,
        "batch": BATCH,
        "limit": LIMIT,
        "duration_s": DURATION,
        "results": results,
    }


def _med(data: dict[str, Any], name: str, key: str) -> float:
    return median([s[key] for s in data["results"][name]])


def render(data: dict[str, Any]) -> str:
    m = data["machine"]

    def med(name: str, key: str) -> float:
        return _med(data, name, key)

    ours, raw = med("batch_ours", "rps"), med("batch_raw", "rps")
    one, raw_one = med("batch_one", "rps"), med("batch_raw_one", "rps")
    procs = data["io_processes"]
    load, wrk, locust = med("load_ours", "rps"), med("load_wrk", "rps"), med("load_locust", "rps")

    def paired(name: str, anchor: str) -> float:
        """The median of each run's own ratio: ours beside the anchor measured right after it,
        so a machine whose speed drifts between runs moves both sides of each pair alike."""
        return median(
            [
                a["rps"] / b["rps"]
                for a, b in zip(data["results"][name], data["results"][anchor], strict=True)
            ]
        )

    rows = [
        (
            f"Batch of {data['batch']:,} GETs (req/s), {procs} io processes, rows persisted",
            f"{ours:,.0f}",
            f"raw aiohttp 1 process: {raw:,.0f}",
            f"{ours / raw:.2f} (paired {paired('batch_ours', 'batch_raw'):.2f})",
            "≥ 1.5",
        ),
        (
            "… with one io process (the task system's cost)",
            f"{one:,.0f}",
            f"raw aiohttp 1 process: {raw_one:,.0f}",
            f"{one / raw_one:.2f} (paired {paired('batch_one', 'batch_raw_one'):.2f})",
            "≥ 0.9",
        ),
    ]
    if data["results"].get("batch_writer"):
        writer, raw_writer = med("batch_writer", "rps"), med("batch_raw_writer", "rps")
        rows.append(
            (
                "… with one io process and `http.row_writer=true` (rows stored by a "
                "helper process)",
                f"{writer:,.0f}",
                f"raw aiohttp 1 process: {raw_writer:,.0f}",
                f"{writer / raw_writer:.2f} (paired "
                f"{paired('batch_writer', 'batch_raw_writer'):.2f})",
                "≥ 0.9",
            )
        )
    cores = int(m.get("cores") or 2)
    cpu = all(
        "io_cpu_us" in r for r in data["results"]["batch_ours"] + data["results"]["batch_one"]
    )
    if cpu:
        io_one, client = med("batch_one", "io_cpu_us"), med("batch_raw_one", "client_cpu_us")
        io2, nginx2, rest2 = (med("batch_ours", f"{k}_cpu_us") for k in ("io", "nginx", "rest"))
        ceiling = cores * 1e6 / (io2 + nginx2 + rest2)
        need = cores * 1e6 / (1.5 * raw) - nginx2 - rest2
        rows += [
            (
                "CPU per URL (µs) in the io process, one io process",
                f"{io_one:.0f}",
                f"raw script's client: {client:.0f}",
                f"{io_one / client:.2f}",
                "—",
            ),
            (
                f"Ceiling on {cores} cores: {cores} s of CPU per s ÷ (io {io2:.0f} + nginx {nginx2:.0f} "
                f"+ rest of the stack {rest2:.0f} µs per URL, 2 io processes)",
                f"{ceiling:,.0f}",
                f"raw aiohttp 1 process: {raw:,.0f}",
                f"{ceiling / raw:.2f}",
                f"≥ 1.5 needs io ≤ {need:.0f} µs/URL",
            ),
        ]
    rows += [
        (
            f"Load test -c{data['limit']} {data['duration_s']:.0f}s, 2 workers (req/s)",
            f"{load:,.0f}",
            f"locust FastHttpUser: {locust:,.0f}",
            f"{load / locust:.2f}",
            "≥ 1.5",
        ),
        (
            "… beside wrk -t2 -c100 (req/s)",
            f"{load:,.0f}",
            f"wrk: {wrk:,.0f}",
            f"{load / wrk:.2f}",
            "— (wrk is C; anchor 65k)",
        ),
    ]
    for name, label in (("paced", "the rate our closed loop reached"), ("half", "half that rate")):
        offered, wrk_rate = med(f"{name}_ours", "offered"), med(f"{name}_wrk", "rps")
        for q in ("p50", "p99"):
            ours_q, wrk_q = med(f"{name}_ours", f"{q}_ms"), med(f"{name}_wrk", f"{q}_ms")
            rows.append(
                (
                    f"{q} open loop at {label}: {offered:,.0f} req/s (ours reached "
                    f"{med(f'{name}_ours', 'rps'):,.0f}; paced wrk {wrk_rate:,.0f})",
                    f"{ours_q:.2f} ms",
                    f"wrk: {wrk_q:.2f} ms",
                    f"{ours_q / wrk_q:.2f}",
                    "≤ 1.2",
                )
            )
            if all("service_p50_ms" in r for r in data["results"][f"{name}_ours"]):
                service_q = med(f"{name}_ours", f"service_{q}_ms")
                rows.append(
                    (
                        f"… {q} of the same run timed from each actual send, as wrk times",
                        f"{service_q:.2f} ms",
                        f"wrk: {wrk_q:.2f} ms",
                        f"{service_q / wrk_q:.2f}",
                        "≤ 1.2",
                    )
                )
    if data["results"].get("half_plain"):
        for q in ("p50", "p99"):
            plain_q, half_wrk = med("half_plain", f"{q}_ms"), med("half_wrk", f"{q}_ms")
            rows.append(
                (
                    f"… {q} at half that rate from 2 plain processes running the same load "
                    "generator (no Celery)",
                    f"{plain_q:.2f} ms",
                    f"wrk: {half_wrk:.2f} ms",
                    f"{plain_q / half_wrk:.2f}",
                    "—",
                )
            )
    closed = data["results"]["load_ours"]
    from .report import machine_line

    lines = [
        "## HTTP: batches and load tests",
        "",
        machine_line(m),
        f"Medians of {data['runs']} runs, all against one private nginx (1 worker, 512-byte file, "
        "access log off, keep-alive unlimited) on the same 2 cores as every client.",
        "",
        "| measure | LEWIS | anchor (same run) | ratio | goal |",
        "|---|---:|---:|---:|---|",
        *[f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows],
        "",
        f"How: *batch* = `submit_http_batch` of {data['batch']:,} copies of the URL, first into "
        "`lewis up --detach` alone (one io process: the task system's own cost, raw aiohttp "
        "measured right after each run), then with a second `lewis worker io` added "
        f"({procs} io processes, threads pool, "
        f"`network.max_connections={data['limit']}`, no per-host limit), timed from submit until "
        "`wait()` returns the merged summary (every row persisted in SQLite first); the ratio "
        "is of the medians, and *paired* is the median of each run's ratio to the raw run "
        "measured right after it; *raw* = "
        f"`bench/rawhttp.py`, one process, {data['limit']} coroutines on one session with "
        f"`TCPConnector(limit={data['limit']})`. *Load test* = `submit_loadtest(url, "
        f"concurrency={data['limit']}, duration={data['duration_s']:.0f}, workers=2)` closed loop, "
        "rate from the merged result; wrk `-t2 -c100 -d10s`; locust "
        "`--headless -u 100 -r 100 -t 10s` with one FastHttpUser GETting the file. *Same offered "
        "load*: our open loop (`rate=` what the closed loop reached; latency from the intended "
        "send time) beside wrk with 100 connections each pausing d ms (Lua `delay()`) so its "
        "rate comes near; wrk has no open loop, so its latency is from the actual send, which "
        'leaves out any wait for a request\'s turn: the "timed from each actual send" rows '
        "are ours measured the same way (the run's service-time histogram). At "
        "the closed loop's own maximum the open loop has no headroom: requests fall behind the "
        "schedule and, timed from when they should have gone, carry that queueing (no "
        "coordinated omission); half that rate shows the client's own latency. "
        f"Parts landed on {closed[-1]['processes']} distinct io processes in the last run "
        f"(handed back: {sum(r['handed_back'] for r in closed)} times over all runs).",
        "",
        "*CPU per URL*: user + system CPU seconds from /proc of each process and its children "
        "(every thread) over the batch, divided by its URLs; *io* is the io worker processes, "
        "*rest of the stack* every other process `lewis up` runs (cpu and control workers, "
        "beat, Flower, the embedded Redis); the raw script's client CPU leaves out its start-up "
        "(the CPU of a 1-URL run). The *ceiling* is what no scheduler can beat on this machine: "
        "every core busy with nothing but this batch's per-URL work.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(run(1), indent=1))
