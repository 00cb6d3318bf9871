"""What monitoring costs and how fresh it is (issue 14).

    python -m bench.run monitoring -r 3

* overhead — the platform suite's no-op drains (10,000 tasks, cpu and io) and sequential
  round trips, with the workers' reporters on and off (``monitoring.reporting``), A/B order
  alternating per run; the loss is each run's on-vs-off difference (the two sides ran back to
  back), then their median; Redis' commandstats count the commands per task (no round trip
  per task: the figure a loaded machine cannot blur);
* idle CPU — over 60 s of an idle cluster (cpu + io + control workers, beat, ``lewis
  monitor`` with one dashboard WebSocket open and a scrape every 10 s): the monitor process'
  CPU, the workers' CPU with reporting on minus off (the reporters), and the collector's CPU
  per run (``collect()`` timed in-process with ``time.process_time``) times runs per second;
* freshness — 1,000 tasks pushed to the io queue (no io worker), then the time until
  ``celery_queue_length{queue_name="io"}`` says 1000 on ``/metrics`` and on the WebSocket,
  against ``monitoring.metrics_interval`` (the default 10 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from .harness import db_url, lewis_env, lewis_worker_argv, median, processes, wait_workers
from .platform import LEWIS_BROKER, LEWIS_RESULTS, System, bench_latency

IDLE_SECONDS = 60.0


def _use_settings(broker: str, reporting: bool) -> None:
    """This (producer) process' settings: its own reporter on or off like the workers'."""
    from lewis_tasks.infra import config, reporter
    from lewis_tasks.infra.redis_client import reset_clients

    reporter.uninstall()
    config.set_settings(
        config.load_settings(
            env={"LEWIS_BROKER_URL": broker, "LEWIS_MONITORING_REPORTING": str(reporting).lower()}
        )
    )
    reset_clients()


def overhead(server: Any, home: Path, run: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    modes = (True, False) if run % 2 == 0 else (False, True)
    for reporting in modes:
        system = System("lewis", server, home)
        system.env["LEWIS_MONITORING_REPORTING"] = str(reporting).lower()
        _use_settings(system.broker, reporting)
        key = "on" if reporting else "off"
        cpu_queue, io_queue = drain(system, "noop_cpu"), drain(system, "noop_io")
        out[key] = {
            "drain_cpu_per_s": cpu_queue["tasks_per_s"],
            "drain_io_per_s": io_queue["tasks_per_s"],
            "worker_cpu_us_cpu": cpu_queue["worker_cpu_us"],
            "worker_cpu_us_io": io_queue["worker_cpu_us"],
            "redis_calls_cpu": cpu_queue["redis_calls"],
            "redis_us_cpu": cpu_queue["redis_us"],
            "rtt_p50_ms": bench_latency(system)["p50_ms"],
        }
        print(f"  overhead run {run} reporting {key}: {json.dumps(out[key])}", flush=True)
    return out


def _fresh_app() -> Any:
    """A Celery app of its own on the current settings (a reconfigured global app keeps its
    remote-control mailbox's producer pool from before: 'Acquire on closed pool')."""
    from celery import Celery

    from lewis_tasks.infra.celery_app import configure_app
    from lewis_tasks.infra.config import get_settings

    return configure_app(Celery("lewis-bench-monitoring"), get_settings())


def drain(system: System, kind: str, count: int = 10_000) -> dict[str, float]:
    """The platform suite's no-op drain, plus the workers' CPU µs per task (CPU time holds
    up on a busy machine where wall-clock rates do not)."""
    from lewis_tasks.producer.base import submit_many

    from .harness import wait_results

    name, queue = system.task(kind)
    system.reset()
    argvs = system.workers(kind)
    with processes(argvs, system.env, f"{system.name}-mdrain-{kind}") as procs:
        wait_workers(system.app, len(argvs))
        time.sleep(1)
        pids = [p.pid for p in procs]
        system.broker_client.config_resetstat()
        cpu0, began = _tree_cpu(pids), time.monotonic()
        submit_many(
            name, (((), {}) for _ in range(count)), app=system.app, queue=queue, batch=2000, pack=1
        )
        ended = wait_results(system.results_client, 0, count, timeout=count / 50)
        cpu = _tree_cpu(pids) - cpu0
        # Redis' own count of the commands it ran (those inside Lua scripts too) and the time
        # it spent on them: a round trip per task would show here whatever the machine's load
        stats = system.broker_client.info("commandstats").values()
    return {
        "tasks_per_s": count / (ended - began),
        "worker_cpu_us": cpu / count * 1e6,
        "redis_calls": sum(int(v["calls"]) for v in stats) / count,
        "redis_us": sum(float(v["usec"]) for v in stats) / count,
    }


def _tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of each pid and all its descendants, now; pool children
    already recycled and reaped count through their parent's ``children_*`` times."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            times = root.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
            for proc in root.children(recursive=True):
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _queue_length(text: str, queue: str) -> float | None:
    prefix = f'celery_queue_length{{queue_name="{queue}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def _cluster(env: dict[str, str], port: int, with_io: bool = True) -> list[list[str]]:
    import sys

    argvs = [
        lewis_worker_argv("cpu", "-c", "2", "-n", "bcpu@%h"),
        lewis_worker_argv("control", "-n", "bcontrol@%h"),
        [sys.executable, "-m", "lewis_tasks.cli", "beat"],
        [sys.executable, "-m", "lewis_tasks.cli", "monitor", "--port", str(port)],
    ]
    if with_io:
        argvs.insert(1, lewis_worker_argv("io", "-n", "bio@%h"))
    return argvs


async def _watch(
    url: str, stop: asyncio.Event, seen: dict[str, float], queue: str, want: int
) -> None:
    """A dashboard client: note when a frame first shows ``want`` ready in ``queue``."""
    from aiohttp import ClientSession

    async with ClientSession() as session, session.ws_connect(f"{url}/ws") as ws:
        while not stop.is_set():
            try:
                msg = await asyncio.wait_for(ws.receive(), 1.0)
            except TimeoutError:
                continue
            if msg.data is None or not isinstance(msg.data, str):
                break
            frame = json.loads(msg.data)
            ready = (frame.get("queues", {}).get(queue) or {}).get("ready")
            if ready == want and "ws" not in seen:
                seen["ws"] = time.time()


def idle_cpu(server: Any, home: Path) -> dict[str, float]:
    """Idle CPU %, of one core, of the monitor, the reporters and the collector."""
    from lewis_tasks.infra.redis_server import free_port

    out: dict[str, float] = {}
    for reporting in (False, True):
        port = free_port()
        env = lewis_env(
            db_url(server, LEWIS_BROKER),
            home,
            LEWIS_BROKER_RESULT_BACKEND=db_url(server, LEWIS_RESULTS),
            LEWIS_MONITORING_REPORTING=str(reporting).lower(),
        )
        argvs = _cluster(env, port)
        with processes(argvs, env, f"monitoring-idle-{reporting}") as procs:
            _use_settings(db_url(server, LEWIS_BROKER), reporting)
            app = _fresh_app()
            wait_workers(app, 3)
            time.sleep(15)  # start-up settles
            url = f"http://127.0.0.1:{port}"
            span, worker_cpu, monitor_cpu = asyncio.run(_measure_idle(url, [p.pid for p in procs]))
            key = "on" if reporting else "off"
            out[f"workers_cpu_pct_{key}"] = 100 * worker_cpu / span
            if reporting:
                out["monitor_cpu_pct"] = 100 * monitor_cpu / span
                out["collector_cpu_pct"] = _collector_cpu(app)
    out["reporters_cpu_pct"] = out["workers_cpu_pct_on"] - out["workers_cpu_pct_off"]
    out["total_cpu_pct"] = (
        max(0.0, out["reporters_cpu_pct"]) + out["monitor_cpu_pct"] + out["collector_cpu_pct"]
    )
    print(f"  idle: {json.dumps({k: round(v, 3) for k, v in out.items()})}", flush=True)
    return out


async def _measure_idle(url: str, pids: list[int]) -> tuple[float, float, float]:
    """(seconds, workers' CPU s, monitor CPU s) over IDLE_SECONDS with one dashboard client
    and a scrape every 10 s; ``pids``: cpu, io, control workers, beat, monitor."""
    stop, seen = asyncio.Event(), {}  # type: ignore[var-annotated]
    watcher = asyncio.create_task(_watch(url, stop, seen, "io", -1))
    await asyncio.sleep(1)
    workers = pids[:3]
    began, w0, m0 = time.monotonic(), _tree_cpu(workers), _tree_cpu([pids[-1]])
    while time.monotonic() - began < IDLE_SECONDS:
        await asyncio.to_thread(_get, f"{url}/metrics")
        await asyncio.sleep(10)
    span = time.monotonic() - began
    w1, m1 = _tree_cpu(workers), _tree_cpu([pids[-1]])
    stop.set()
    await watcher
    return span, w1 - w0, m1 - m0


def _collector_cpu(app: Any, runs: int = 10) -> float:
    """CPU % of one core the collector costs at the default interval (10 s)."""
    from lewis_tasks.infra.collector import collect
    from lewis_tasks.infra.config import get_settings
    from lewis_tasks.infra.metrics_store import store_from_settings

    store = store_from_settings()
    m = get_settings().monitoring
    began = time.process_time()
    for _ in range(runs):
        collect(app, store, ping_timeout=m.ping_timeout)
    per_run = (time.process_time() - began) / runs
    return 100 * per_run / m.metrics_interval


def freshness(server: Any, home: Path, runs: int) -> list[dict[str, float]]:
    from lewis_tasks.infra.redis_server import free_port
    from lewis_tasks.producer.base import submit_many

    port = free_port()
    broker = db_url(server, LEWIS_BROKER)
    env = lewis_env(broker, home, LEWIS_BROKER_RESULT_BACKEND=db_url(server, LEWIS_RESULTS))
    out = []
    with processes(_cluster(env, port, with_io=False), env, "monitoring-fresh"):
        _use_settings(broker, True)
        from lewis_tasks.infra.config import get_settings
        from lewis_tasks.infra.redis_client import get_redis

        app = _fresh_app()
        wait_workers(app, 2)
        url = f"http://127.0.0.1:{port}"
        interval = get_settings().monitoring.metrics_interval
        for _ in range(runs):
            get_redis().delete("io")
            deadline = time.monotonic() + 60
            while _queue_length(_get(f"{url}/metrics"), "io") != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("the io queue never showed empty on /metrics")
                time.sleep(0.2)
            time.sleep(random.uniform(0, interval))  # push at any phase of the interval

            async def push_and_watch() -> dict[str, float]:
                stop = asyncio.Event()
                seen: dict[str, float] = {}
                watcher = asyncio.create_task(_watch(url, stop, seen, "io", 1000))
                await asyncio.sleep(1.5)
                submit_many("lewis.bench.io_noop", [((), {})] * 1000, app=app, queue="io", pack=1)
                pushed = time.time()
                while "metrics" not in seen or "ws" not in seen:
                    if (
                        "metrics" not in seen
                        and _queue_length(await asyncio.to_thread(_get, f"{url}/metrics"), "io")
                        == 1000
                    ):
                        seen["metrics"] = time.time()
                    if time.time() - pushed > 4 * interval:
                        break
                    await asyncio.sleep(0.05)
                stop.set()
                await watcher
                return {
                    "metrics_s": seen.get("metrics", float("nan")) - pushed,
                    "ws_s": seen.get("ws", float("nan")) - pushed,
                    "interval_s": float(interval),
                }

            result = asyncio.run(push_and_watch())
            print(
                f"  freshness: {json.dumps({k: round(v, 3) for k, v in result.items()})}",
                flush=True,
            )
            out.append(result)
        get_redis().delete("io")
    return out


def hot_path(tasks: int = 200_000) -> dict[str, float]:
    """CPU µs one task costs the reporter in the worker: received, started, finished."""
    from lewis_tasks.infra.reporter import MetricsReporter

    reporter = MetricsReporter(
        lambda: None,
        "bench@h",
        interval=10,  # type: ignore[arg-type, return-value]
        report_interval=2,
        retention=3600,
    )
    names = [f"lewis.bench.t{i}" for i in range(8)]
    began = time.process_time()
    for i in range(tasks):
        name, tid = names[i & 7], str(i)
        reporter.count("received", name, "cpu")
        reporter.task_started(tid, name, "cpu", time.time())
        reporter.task_finished(tid, name, "cpu", "SUCCESS")
    per_task = (time.process_time() - began) / tasks * 1e6
    print(f"  hot path: {per_task:.2f} µs CPU per task", flush=True)
    return {"us_per_task": per_task}


def run(runs: int) -> dict[str, Any]:
    import tempfile

    from .harness import private_redis
    from .run import machine

    load = os.getloadavg()
    results: dict[str, Any] = {
        "overhead": [],
        "load_before": list(load),
        "hot_path": [hot_path() for _ in range(runs)],
    }
    with private_redis() as server, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        for i in range(runs):
            results["overhead"].append(overhead(server, home, i))
        results["idle"] = idle_cpu(server, home)
        results["freshness"] = freshness(server, home, runs)
    results["load_after"] = list(os.getloadavg())
    return {"machine": machine(), "runs": runs, "results": results}


def render(data: dict[str, Any]) -> str:
    from .report import machine_line

    r = data["results"]

    def med(mode: str, key: str) -> float:
        return median([run[mode][key] for run in r["overhead"] if key in run[mode]])

    def losses(key: str, higher_better: bool) -> list[float]:
        """Each run's on-vs-off loss (the two sides ran back to back), in %."""
        pairs = [(run["on"][key], run["off"][key]) for run in r["overhead"] if key in run["on"]]
        sign = 1 if higher_better else -1
        return sorted(sign * (off - on) / off * 100 for on, off in pairs)

    rows = []
    for key, label, higher_better in (
        ("drain_cpu_per_s", "no-op drain, cpu queue (tasks/s)", True),
        ("drain_io_per_s", "no-op drain, io queue (tasks/s)", True),
        ("worker_cpu_us_cpu", "workers' CPU per task, cpu drain (µs)", False),
        ("worker_cpu_us_io", "workers' CPU per task, io drain (µs)", False),
        ("redis_calls_cpu", "Redis commands per task, cpu drain (all clients)", False),
        ("redis_us_cpu", "Redis busy time per task, cpu drain (µs)", False),
        ("rtt_p50_ms", "round trip p50 (ms)", False),
    ):
        each = losses(key, higher_better)
        if not each:
            continue
        on, off = med("on", key), med("off", key)
        spread = f"{each[0]:+.1f} … {each[-1]:+.1f} %"
        rows.append(f"| {label} | {off:,.1f} | {on:,.1f} | {median(each):+.1f} % | {spread} |")
    idle = r["idle"]
    fresh = r["freshness"]
    lines = [
        "## Monitoring: what reporting costs, and how fresh /metrics is",
        "",
        machine_line(data["machine"]),
        f"`python -m bench.run monitoring -r {data['runs']}` (`bench/monitoring.py`); load "
        f"average before {r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f}. Medians of "
        f"{data['runs']} runs, reporting on and off alternating first (`monitoring.reporting`), "
        "the platform suite's drains (10,000 no-ops, 2 worker processes) and round trips "
        "(400 sequential no-ops). Loss: how much worse with reporting on (goal ≤ 5 %), per run "
        "(its two sides ran back to back), then the median of the runs.",
        "",
        "The reporter's own cost per task in the worker (received + started + finished, "
        f"in-process, CPU time): {median([h['us_per_task'] for h in r['hot_path']]):.1f} µs.",
        "",
        "| | reporting off | reporting on | loss (median of the runs') | each run's loss |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"Idle, {IDLE_SECONDS:.0f} s, cpu (2 children) + io + control workers, beat and `lewis "
        "monitor` with one dashboard WebSocket open and a scrape every 10 s, in % of one core "
        "(goal < 2 % together):",
        "",
        "| part | CPU % of one core |",
        "|---|---:|",
        f"| reporters (workers' CPU, reporting on − off: {idle['workers_cpu_pct_on']:.2f} − "
        f"{idle['workers_cpu_pct_off']:.2f}) | {idle['reporters_cpu_pct']:.2f} |",
        f"| collector (`collect()` CPU per run ÷ 10 s interval) | {idle['collector_cpu_pct']:.2f} |",
        f"| `lewis monitor` (1 frame/s to one client, scrapes) | {idle['monitor_cpu_pct']:.2f} |",
        f"| **together** | **{idle['total_cpu_pct']:.2f}** |",
        "",
        "Freshness: 1,000 tasks pushed to the io queue with no io worker, until "
        '`celery_queue_length{queue_name="io"}` reads 1000 (goal: within one '
        f"`monitoring.metrics_interval`, here {fresh[0]['interval_s']:.0f} s):",
        "",
        "| run | on /metrics (s) | on the WebSocket (s) |",
        "|---|---:|---:|",
        *[f"| {i + 1} | {f['metrics_s']:.2f} | {f['ws_s']:.2f} |" for i, f in enumerate(fresh)],
        f"| median | {median([f['metrics_s'] for f in fresh]):.2f} | "
        f"{median([f['ws_s'] for f in fresh]):.2f} |",
    ]
    return "\n".join(lines)
