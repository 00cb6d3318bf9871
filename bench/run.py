"""Run the benchmarks and rewrite BENCHMARKS.md.

    python -m bench.run                 # every suite, medians of 3
    python -m bench.run platform -r 1   # one suite, one repetition (quick look)

Each suite writes ``bench/results/<suite>.json`` (kept in git, so BENCHMARKS.md can always be
rebuilt from every suite's last run); BENCHMARKS.md is then rendered from all of them.
Run nothing else heavy meanwhile: the machine has 2 cores and the figures are wall-clock.
"""

from __future__ import annotations

import argparse
import importlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import ROOT, median, private_redis

RESULTS = ROOT / "bench" / "results"
SUITES = ("platform", "scan", "http", "profiling", "monitoring", "scaling", "alerting")


def machine() -> dict[str, Any]:
    """This machine and the package versions, in the shape BENCHMARKS.md shows."""
    from lewis_tasks.domain.benchstats import machine_info

    info = machine_info(("celery", "kombu", "redis", "aiohttp", "sqlalchemy"))
    return {"cpu": info.cpu_model, "cores": info.cores_logical,
            "memory_gb": round(info.memory_total_bytes / 2**30, 1), "python": info.python,
            "os": info.os, "versions": dict(info.packages),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_platform(runs: int) -> dict[str, Any]:
    from . import platform as plat

    results: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def record(bench: str, system: str, value: dict[str, Any]) -> None:
        results.setdefault(bench, {}).setdefault(system, []).append(value)
        print(f"  {bench:<14} {system:<9} {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in value.items()})}", flush=True)

    with private_redis() as server, tempfile.TemporaryDirectory() as tmp:
        systems = {name: plat.System(name, server, Path(tmp)) for name in ("baseline", "lewis")}
        steps: list[tuple[str, Callable[[plat.System], dict[str, Any]]]] = [
            ("latency", plat.bench_latency),
            ("drain_io", lambda s: plat.bench_drain(s, "noop_io")),
            ("drain_cpu", lambda s: plat.bench_drain(s, "noop_cpu")),
            ("enqueue", plat.bench_enqueue),
            ("io_wait", plat.bench_io_wait),
        ]
        for _ in range(runs):
            for bench, func in steps:
                for name, system in systems.items():  # interleaved: drift hits both sides
                    record(bench, name, func(system))
            record("enqueue_batched", "lewis",
                   plat.bench_enqueue(systems["lewis"], count=50_000, batched=True))
            # the same 2,000 independent waits, 50 calls to a message (submit_many(pack=50))
            record("io_wait_packed", "lewis", plat.bench_io_wait(systems["lewis"], pack=50))
            # the io pool choice: the same io profile on prefork (2 workers x 2 children)
            prefork = plat.System("lewis_prefork", server, Path(tmp))
            record("io_pool_drain", "prefork", plat.bench_drain(prefork, "noop_io"))
            record("io_pool_wait", "prefork", plat.bench_io_wait(prefork, count=400))
            record("io_pool_wait", "threads", plat.bench_io_wait(systems["lewis"], count=400))
    return {"machine": machine(), "runs": runs, "results": results}


def summarise(samples: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in samples[0].items() if isinstance(v, (int, float))]
    return {k: median([s[k] for s in samples]) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", default=list(SUITES))
    parser.add_argument("-r", "--runs", type=int, default=3)
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for suite in args.suites:
        if suite not in SUITES:
            parser.error(f"unknown suite {suite!r} (suites: {', '.join(SUITES)})")
        if suite == "platform":
            runner: Callable[[int], dict[str, Any]] = run_platform
        else:
            try:
                runner = importlib.import_module(f"bench.{suite}").run
            except ModuleNotFoundError:
                print(f"suite {suite}: not written yet, skipped")
                continue
        print(f"suite {suite} ({args.runs} runs)", flush=True)
        data = runner(args.runs)
        (RESULTS / f"{suite}.json").write_text(json.dumps(data, indent=1, default=str))
    from .report import write_markdown

    write_markdown(RESULTS, ROOT / "BENCHMARKS.md")
    print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
