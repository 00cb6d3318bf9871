"""What the metrics reporter costs a prefork (cpu) worker, in many back-to-back pairs (issue 14).

    python -m bench.reporting_pairs [--pairs 10] [--tasks 4000]

The monitoring suite's three runs cannot resolve a 5 % effect on the cpu drain: its rates
swing ±20 % from one drain to the next. This runs many short drains instead, reporting on
and off in ABBA order (each pair back to back), twice: with the cpu profile's child
recycling as shipped (``workers.cpu_max_tasks_per_child`` 1000) and without it (100,000), and
reports per pair the loss in drain rate, in the workers' CPU per task and in Redis' busy time
per task (commandstats), then the median and range over the pairs. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import (
    interleaved,
    median,
    private_redis,
    processes,
    wait_results,
    wait_workers,
)
from .monitoring import _tree_cpu, _use_settings
from .platform import System

RECYCLE = {"as shipped (1,000 tasks per child)": "1000", "no recycling (100,000)": "100000"}


def drain(server: Any, home: Path, reporting: bool, per_child: str, count: int) -> dict[str, Any]:
    """One cpu no-op drain of ``count`` tasks on a fresh cpu worker (2 children)."""
    from lewis_tasks.producer.base import submit_many

    system = System("lewis", server, home)
    system.env["LEWIS_MONITORING_REPORTING"] = str(reporting).lower()
    system.env["LEWIS_WORKERS_CPU_MAX_TASKS_PER_CHILD"] = per_child
    _use_settings(system.broker, reporting)
    name, queue = system.task("noop_cpu")
    system.reset()
    argvs = system.workers("noop_cpu")
    with processes(argvs, system.env, f"pairs-{reporting}") as procs:
        wait_workers(system.app, len(argvs))
        time.sleep(1)
        pids = [p.pid for p in procs]
        system.broker_client.config_resetstat()
        cpu0, began = _tree_cpu(pids), time.monotonic()
        submit_many(
            name, (((), {}) for _ in range(count)), app=system.app, queue=queue, batch=2000, pack=1
        )
        ended = wait_results(system.results_client, 0, count, timeout=count / 20)
        cpu = _tree_cpu(pids) - cpu0
        stats = system.broker_client.info("commandstats").values()
    return {
        "reporting": reporting,
        "per_s": count / (ended - began),
        "cpu_us": cpu / count * 1e6,
        "redis_us": sum(float(v["usec"]) for v in stats) / count,
    }


def run(pairs: int, tasks: int) -> dict[str, Any]:
    from .run import machine

    out: dict[str, Any] = {"machine": machine(), "pairs": pairs, "tasks": tasks, "series": {}}
    with private_redis() as server, tempfile.TemporaryDirectory() as tmp:
        for label, per_child in RECYCLE.items():
            rows = []
            for i in range(pairs):
                for reporting in interleaved((True, False), i):
                    rows.append(drain(server, Path(tmp), reporting, per_child, tasks))
                    print(f"  {label} pair {i + 1}: {json.dumps(rows[-1])}", flush=True)
            out["series"][label] = rows
    return out


def losses(rows: list[dict[str, Any]], key: str, higher_better: bool) -> list[float]:
    """Each pair's loss with reporting on, in % (positive: worse with reporting)."""
    out = []
    for a, b in zip(rows[::2], rows[1::2], strict=True):
        on, off = (a, b) if a["reporting"] else (b, a)
        diff = off[key] - on[key] if higher_better else on[key] - off[key]
        out.append(diff / off[key] * 100)
    return sorted(out)


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"{m['when']} · {m['cores']} cores · `python -m bench.reporting_pairs --pairs "
        f"{data['pairs']} --tasks {data['tasks']:,}`: {data['pairs']} pairs of cpu no-op drains "
        f"({data['tasks']:,} tasks, one cpu worker of 2 children), reporting on and off back to "
        "back, ABBA. Loss: positive when reporting made it worse.",
        "",
        "| child recycling | drain rate, off → on (median) | drain loss (median, range) | "
        "workers' CPU per task, off → on | CPU loss (median, range) | Redis busy per task, loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, rows in data["series"].items():
        rate = {r: median([x["per_s"] for x in rows if x["reporting"] is r]) for r in (False, True)}
        cpu = {r: median([x["cpu_us"] for x in rows if x["reporting"] is r]) for r in (False, True)}
        cells = []
        for key, hb in (("per_s", True), ("cpu_us", False), ("redis_us", False)):
            each = losses(rows, key, hb)
            cells.append(f"{median(each):+.1f} % ({each[0]:+.1f} … {each[-1]:+.1f})")
        lines.append(
            f"| {label} | {rate[False]:,.0f} → {rate[True]:,.0f}/s | {cells[0]} | "
            f"{cpu[False]:,.0f} → {cpu[True]:,.0f} µs | {cells[1]} | {cells[2]} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--json", type=Path, default=Path("bench/results/reporting_pairs.json"))
    args = parser.parse_args()
    data = run(args.pairs, args.tasks)
    args.json.write_text(json.dumps(data, indent=1))
    print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
