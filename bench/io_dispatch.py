"""The io worker's dispatch path, per message (issue 18.2): threads pool vs no hand-off.

    python -m bench.io_dispatch [--runs 3] [--count 15000] [--py-spy PATH] [--task sleep]

One `lewis worker io` on a private Redis drains ``count`` unpacked io no-ops
(``submit_many(..., pack=1)``), once with the io profile's threads pool (Celery's consumer
thread hands each message to a pool thread) and once with ``-P solo`` (the consumer runs the
task itself: no hand-off at all, the lower bound of what any in-thread or event-loop pool can
save on dispatch); interleaved ``runs`` times. Reported: drain rate, and CPU microseconds per
message of the worker process and of redis-server (psutil, before and after), and the
worker's split by thread from /proc: the consumer (main) thread's user and system CPU and
context switches per message, and the other threads' (the pool's and the event loop's). With
``--py-spy`` a GIL-holding profile (``py-spy record --gil``) of one threads-pool drain is
summarised by package and function: where a message's CPU goes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.harness import (
    db_url,
    lewis_env,
    lewis_worker_argv,
    median,
    private_redis,
    processes,
    wait_workers,
)
from bench.platform import _lewis_app

# the workload: a no-op (the dispatch path alone), or a 50 ms wait on the event loop
TASKS = {"noop": ("lewis.bench.io_noop", ()), "sleep": ("lewis.bench.io_sleep", (0.05,))}
POOLS = {"threads": [], "solo": ["-P", "solo"]}
PACKAGES = (
    "lewis_tasks",
    "aiohttp",
    "asyncio",
    "sqlalchemy",
    "celery",
    "kombu",
    "redis",
    "billiard",
    "vine",
    "json",
    "concurrent",
)


def _threads(proc: psutil.Process) -> dict[int, tuple[float, float, int, int]]:
    """Per thread of the worker's process (the one with the pool's threads): user and system
    seconds, voluntary and involuntary context switches, from /proc."""
    worker = max([proc, *proc.children(recursive=True)], key=lambda p: p.num_threads())
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{worker.pid}/task"):
        try:
            stat = Path(f"/proc/{worker.pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1]
            status = Path(f"/proc/{worker.pid}/task/{tid}/status").read_text()
        except OSError:  # the thread ended
            continue
        fields = stat.split()
        switches = dict(
            line.split(":\t") for line in status.splitlines() if "ctxt_switches" in line
        )
        out[int(tid) if int(tid) != worker.pid else 0] = (  # 0: the main (consumer) thread
            int(fields[11]) / tick,
            int(fields[12]) / tick,
            int(switches["voluntary_ctxt_switches"]),
            int(switches["nonvoluntary_ctxt_switches"]),
        )
    return out


def _split(
    before: dict[int, tuple[float, float, int, int]],
    after: dict[int, tuple[float, float, int, int]],
    count: int,
) -> dict[str, float]:
    """CPU µs and context switches per message: the consumer (main) thread, the others."""
    out: dict[str, float] = {}
    for part, tids in (("consumer", [0]), ("other_threads", [t for t in after if t])):
        deltas = [
            [a - b for a, b in zip(after[t], before.get(t, (0, 0, 0, 0)), strict=True)]
            for t in tids
        ]
        out[f"{part}_user_us"] = round(1e6 * sum(d[0] for d in deltas) / count, 1)
        out[f"{part}_system_us"] = round(1e6 * sum(d[1] for d in deltas) / count, 1)
        out[f"{part}_voluntary_switches"] = round(sum(d[2] for d in deltas) / count, 2)
        out[f"{part}_involuntary_switches"] = round(sum(d[3] for d in deltas) / count, 2)
    return out


def _cpu(proc: psutil.Process) -> float:
    return sum(
        t.user + t.system for t in (p.cpu_times() for p in [proc, *proc.children(recursive=True)])
    )


def drain(
    server: Any,
    home: Path,
    pool: str,
    count: int,
    spy: str | None = None,
    task: str = "noop",
    keep_raw: Path | None = None,
) -> dict[str, Any]:
    name, call = TASKS[task][0], (TASKS[task][1], {})
    broker, results = db_url(server, 1), db_url(server, 2)
    env = lewis_env(
        broker, home, LEWIS_BROKER_RESULT_BACKEND=results, LEWIS_WORKERS_IO_CONCURRENCY="100"
    )
    app = _lewis_app(broker, results)
    from lewis_tasks.producer.base import submit_many

    redis.Redis.from_url(broker).flushdb()
    rc = redis.Redis.from_url(results)
    with processes([lewis_worker_argv("io", *POOLS[pool])], env, f"iodispatch-{pool}") as procs:
        wait_workers(app, 1)
        submit_many(name, [call] * 500, app=app, queue="io", pack=1)  # warm-up
        deadline = time.monotonic() + 60
        while rc.dbsize() < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        rc.flushdb()
        worker, server_proc = psutil.Process(procs[0].pid), psutil.Process(server.process.pid)
        c0 = _commands(rc)
        t0 = _threads(worker)
        w0, r0, began = _cpu(worker), _cpu(server_proc), time.monotonic()
        submit_many(name, (call for _ in range(count)), app=app, queue="io", pack=1, batch=2000)
        profiler = None
        if spy:
            profiler = subprocess.Popen(
                [spy, "record", "--gil", "-r", "250", "-d", "6", "-f", "raw", "-o",
                 str(home / "spy.txt"), "-p", str(procs[0].pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        while rc.dbsize() < count and time.monotonic() - began < 300:
            time.sleep(0.02)
        seconds = time.monotonic() - began
        w1, r1, t1 = _cpu(worker), _cpu(server_proc), _threads(worker)
        calls = {k: v - c0.get(k, 0) for k, v in _commands(rc).items()}
        out = {
            "pool": pool,
            "tasks_per_s": count / seconds,
            "worker_us": 1e6 * (w1 - w0) / count,
            "redis_us": 1e6 * (r1 - r0) / count,
            # Redis commands per message (a script's own calls included), and the common ones
            "redis_commands": round(sum(calls.values()) / count, 2),
            "by_command": {k: round(v / count, 2) for k, v in calls.items() if v >= count / 20},
            # where the worker's CPU goes by thread, and how often its threads block and wake
            "threads": _split(t0, t1, count),
        }
        if profiler is not None:
            profiler.wait()
            out["profile"] = summarise(home / "spy.txt")
            if keep_raw is not None:
                keep_raw.write_bytes((home / "spy.txt").read_bytes())
    return out


def _commands(client: Any) -> dict[str, int]:
    """Redis's command counts so far (INFO commandstats), by command."""
    return {k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in client.info("commandstats").items()}  # fmt: skip


def _package(frame: str) -> str:
    path = re.search(r"\((.*?):\d+\)", frame)
    file = path.group(1) if path else frame
    file = "/" + file.lstrip("/")  # py-spy names files relative to their sys.path entry
    return next((p for p in PACKAGES if f"/{p}/" in file or file.endswith(f"/{p}.py")), "other")


def summarise(raw: Path, top: int = 25) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks → self and inclusive shares by package, top functions."""
    total = 0
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_text)
        total += n
        frames = stack.split(";")[1:] or ["(no Python frame)"]  # a thread py-spy saw no frame of
        own[_package(frames[-1])] += n
        for pkg in {_package(f) for f in frames}:
            inclusive[pkg] += n
        for fn in {re.sub(r":\d+\)", ")", f) for f in frames}:
            functions[fn] += n

    def share(c: collections.Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(100 * v / total, 1)) for name, v in c.most_common(k)]

    return {
        "samples": total,
        "self_by_package": share(own, 10),
        "inclusive_by_package": share(inclusive, 10),
        "functions": share(functions, top + 20),  # the first ~20 are the same entry frames
    }


def main() -> None:
    from bench.run import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=15_000)
    parser.add_argument("--py-spy", dest="spy", default=None)
    parser.add_argument("--task", choices=sorted(TASKS), default="noop")
    parser.add_argument("--pools", default=",".join(POOLS), help="comma-separated subset")
    parser.add_argument("--spy-pool", default="threads", choices=sorted(POOLS))
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's raw stacks here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {pool: [] for pool in args.pools.split(",")}
    with private_redis() as server, tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for pool in runs:  # interleaved
                got = drain(server, Path(tmp), pool, args.count, task=args.task)
                runs[pool].append(got)
                print(json.dumps({k: round(v, 1) if isinstance(v, float) else v
                                  for k, v in got.items()}), flush=True)  # fmt: skip
        profile = (
            drain(server, Path(tmp), args.spy_pool, args.count, args.spy, args.task, args.raw)
            if args.spy
            else None
        )
    data = {"machine": machine(), "count": args.count, "runs": runs, "profile": profile}
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    for pool, rows in runs.items():
        print(
            f"{pool:8} {median([r['tasks_per_s'] for r in rows]):7,.0f}/s  worker "
            f"{median([r['worker_us'] for r in rows]):5.0f} us/msg  redis "
            f"{median([r['redis_us'] for r in rows]):4.0f} us/msg"
        )
    if profile:
        print(json.dumps(profile["profile"], indent=1))


if __name__ == "__main__":
    main()
