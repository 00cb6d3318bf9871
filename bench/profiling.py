"""Suite "profiling": what profiling itself costs — a profiled call's wall time vs the same call bare.

For each registered CPU workload (the callables ``lewis profile`` runs), in one process, modes
interleaved so drift hits all of them alike:

* ``plain`` — the call alone;
* ``cprofile`` — the call under a bare ``cProfile.Profile().runcall`` (the standard tool: the anchor);
* ``ours`` — ``profile_call(..., trace_memory=False)``: cProfile plus the deadline watcher;
* ``cprofile_mem`` — the bare cProfile call inside ``tracemalloc.start()``/``stop()`` (the
  anchor of the next);
* ``ours_mem`` — ``profile_call(...)`` with tracemalloc and peak sampling (the task's default).

Each figure is the median of 5 calls; a run's figures are then medianed over the runs. For the
profiled modes two walls are kept: the call's own (``report.wall_seconds``, what the task spent
in the target) and the whole ``profile_call`` (plus stats rows and snapshots: what the task
costs the worker beyond the target).
"""

from __future__ import annotations

import cProfile
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from lewis_tasks.domain import workloads
from lewis_tasks.domain.profiler import profile_call

from .run import machine

CALLS = 5
WORKLOADS: dict[str, Callable[[], Any]] = {
    "workload.spin (300k loops)": lambda: workloads.spin(300_000),
    "workload.merge_histograms (8 × 4,000)": lambda: workloads.merge_histograms(8, 4_000),
    "workload.match_services (1,500)": lambda: workloads.match_services(1_500),
    "workload.merge_scan_chunks (64 × 4,096)": lambda: workloads.merge_scan_chunks(),
}
MODES = ("plain", "cprofile", "ours", "cprofile_mem", "ours_mem")


def _once(mode: str, func: Callable[[], Any]) -> tuple[float, float]:
    """(seconds inside the call, seconds of the whole measured step) for one call in ``mode``."""
    began = time.perf_counter()
    if mode == "plain":
        func()
        inner = time.perf_counter() - began
        return inner, inner
    if mode in ("cprofile", "cprofile_mem"):
        if mode == "cprofile_mem":
            tracemalloc.start()
        try:
            cProfile.Profile().runcall(func)
        finally:
            tracemalloc.stop()  # a no-op when not tracing
        inner = time.perf_counter() - began
        return inner, inner
    report = profile_call(func, top_n=25, max_seconds=60, trace_memory=mode == "ours_mem")
    return report.wall_seconds, time.perf_counter() - began


def run(runs: int) -> dict[str, Any]:
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for index in range(runs):
        for name, func in WORKLOADS.items():
            func()  # warm: imports, the CVE sample parsed once, caches
            samples: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
            for _ in range(CALLS):
                for mode in MODES:  # interleaved
                    samples[mode].append(_once(mode, func))
            for mode in MODES:
                inner = statistics.median(s[0] for s in samples[mode])
                outer = statistics.median(s[1] for s in samples[mode])
                results.setdefault(name, {}).setdefault(mode, []).append(
                    {"call_ms": inner * 1e3, "total_ms": outer * 1e3}
                )
            print(
                f"  run {index + 1}: {name:<42} "
                + "  ".join(f"{m} {results[name][m][-1]['call_ms']:.1f}" for m in MODES)
                + " ms",
                flush=True,
            )
    return {"machine": machine(), "runs": runs, "calls": CALLS, "results": results}


def render(data: dict[str, Any]) -> str:
    m, results = data["machine"], data["results"]

    def med(name: str, mode: str, key: str = "call_ms") -> float:
        return float(statistics.median(r[key] for r in results[name][mode]))

    rows = []
    for name in results:
        plain, bare = med(name, "plain"), med(name, "cprofile")
        ours, mem, bare_mem = med(name, "ours"), med(name, "ours_mem"), med(name, "cprofile_mem")
        rows.append(
            f"| {name} | {plain:.1f} | {bare:.1f} ({bare / plain:.2f}×) | {ours:.1f} "
            f"({ours / plain:.2f}×) | {ours / bare:.2f} | {bare_mem:.1f} ({bare_mem / plain:.1f}×) "
            f"| {mem:.1f} ({mem / plain:.1f}×) | {mem / bare_mem:.2f} | "
            f"{med(name, 'ours', 'total_ms'):.1f} / {med(name, 'ours_mem', 'total_ms'):.1f} |"
        )
    from .report import machine_line

    lines = [
        "## Profiling: what `lewis profile` costs",
        "",
        machine_line(m),
        f"Medians of {data['runs']} runs, each the median of {data['calls']} calls per mode, "
        "modes interleaved, all in one process (`bench/profiling.py`). *Plain* is the registered "
        "workload called bare; the anchor is the same call under a bare `cProfile.Profile()."
        "runcall` (the standard tool); *ours* is `profile_call` as `lewis.profile.run` uses it "
        "(cProfile + the deadline watcher thread), without and with tracemalloc (the task's "
        "default: allocation sites, sampled peaks), each beside the bare tool doing the same "
        "(for memory: `tracemalloc.start()` around the bare cProfile call).",
        "",
        "| workload | plain ms | bare cProfile ms (× plain) | ours, no memory ms (× plain) "
        "| ours ÷ bare cProfile (goal ≤ 1.10) | bare cProfile + tracemalloc ms (× plain) "
        "| ours + tracemalloc ms (× plain) | ours ÷ bare, memory (goal ≤ 1.10) "
        "| whole profile_call ms, no memory / memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "How to read it: the × plain columns are the price of profiling a call — cProfile's "
        "per-call hook makes call-heavy code (many small Python functions) slower than loop-heavy "
        "code; tracemalloc adds a hook per allocation on top. The *ours ÷ bare* columns are what our "
        "wrapper adds to the standard tools (goal: within noise); with memory that includes the "
        "watcher's peak snapshots. The last column is the whole "
        "`profile_call`, including building the top-N rows and the tracemalloc snapshots: what "
        "the worker spends beyond the target. Use `--no-memory` when only time matters.",
    ]
    return "\n".join(lines)
