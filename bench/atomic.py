"""The atomic take against kombu's BRPOP: what taking and recording in one step costs.

    python -m bench.atomic          # 4 runs of each side, interleaved (AB BA AB BA), medians
    python -m bench.atomic -r 6

Both sides are ``lewis worker io`` as shipped on the same private Redis, one with
``broker.atomic_take`` (the default), one with it off (kombu's BRPOP, then ``QoS.append``'s
pipeline): the platform suite's no-op round trip (p50 / p99, one worker) and io drain (10,000
no-ops, 2 workers). Writes ``bench/results/atomic.json``, shown in BENCHMARKS.md's Chaos
section (docs/atomic-unacked.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from . import platform as plat
from .harness import ROOT, interleaved, median, private_redis

SIDES = {
    "atomic": {"LEWIS_BROKER_ATOMIC_TAKE": "true"},
    "brpop": {"LEWIS_BROKER_ATOMIC_TAKE": "false"},
}
COMMAND = "python -m bench.atomic"


def run(
    runs: int, sides: dict[str, dict[str, str]] = SIDES, waits: bool = False
) -> dict[str, dict[str, list[float]]]:
    """The platform suite's round trip and io drain for each side (``lewis worker io`` as
    shipped, with that side's settings), sides interleaved: AB BA … (ABC CBA … for more);
    ``waits``: also its 2,000 unpacked 50 ms waits (2 io workers)."""
    figures: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
    with private_redis() as server, tempfile.TemporaryDirectory() as tmp:
        systems = {}
        for side, env in sides.items():
            systems[side] = plat.System("lewis", server, Path(tmp))
            systems[side].env.update(env)
        for i in range(runs):
            for side in interleaved(list(sides), i):
                latency = plat.bench_latency(systems[side])
                drain = plat.bench_drain(systems[side], "noop_io")
                sample = {
                    "p50_ms": latency["p50_ms"],
                    "p99_ms": latency["p99_ms"],
                    "drain_per_s": drain["tasks_per_s"],
                }
                if waits:
                    sample["waits_s"] = plat.bench_io_wait(systems[side])["seconds"]
                sample["load1"] = os.getloadavg()[0]
                for key, value in sample.items():
                    figures[side].setdefault(key, []).append(value)
                print(
                    f"  run {i + 1} {side:<7} {json.dumps({k: round(v, 3) for k, v in sample.items()})}",
                    flush=True,
                )
    return figures


def cost_lines(data: dict[str, Any]) -> list[str]:
    """The atomic take's cost, for the Chaos section of BENCHMARKS.md."""
    from .report import machine_line

    med = {
        side: {k: median(v) for k, v in measures.items()}
        for side, measures in data["figures"].items()
    }
    atomic, brpop = med["atomic"], med["brpop"]
    runs = len(data["figures"]["atomic"]["p50_ms"])
    loads = [x for measures in data["figures"].values() for x in measures.get("load1", [0.0])]

    def row(name: str, key: str, fmt: str) -> str:
        return (
            f"| {name} | {atomic[key]:{fmt}} | {brpop[key]:{fmt}} "
            f"| {atomic[key] / brpop[key]:.2f} |"
        )

    return [
        "",
        "**The atomic take's cost** (`broker.atomic_take`, on by default; off = kombu's BRPOP "
        "then `QoS.append`'s pipeline): `lewis worker io` as shipped on one private Redis, sides "
        f"interleaved (AB BA …), medians of {runs} runs each; the platform suite's no-op round "
        "trip (one worker) and io drain (10,000 no-ops, 2 workers). "
        f"{machine_line(data['machine'])}; the machine was shared with other sessions' runs "
        f"(load average {min(loads):.1f}–{max(loads):.1f} on 2 cores after the samples): treat "
        "differences under ~15 % as noise. "
        f"`{COMMAND}` at {data['code']}.",
        "",
        "| measure | atomic take | BRPOP | ratio |",
        "|---|---:|---:|---:|",
        row("Round trip p50 (ms)", "p50_ms", ".2f"),
        row("Round trip p99 (ms)", "p99_ms", ".2f"),
        row("Drain, io queue (tasks/s)", "drain_per_s", ",.0f"),
    ]


def save(figures: dict[str, dict[str, list[float]]], name: str, write: bool = True) -> bool:
    """Print each side's medians; with ``write``, keep the samples in bench/results/``name``
    with the machine and the commit measured."""
    from .run import RESULTS, machine

    summary = {
        side: {k: round(median(v), 3) for k, v in measures.items()}
        for side, measures in figures.items()
    }
    print(json.dumps(summary))
    if write:
        code = subprocess.run(
            ["git", "log", "-1", "--format=%h"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        data = {"machine": machine(), "code": code, "figures": figures}
        (RESULTS / name).write_text(json.dumps(data, indent=1))
        print(f"wrote bench/results/{name}")
    return write


def main(argv: list[str] | None = None) -> int:
    from .chaos import render
    from .report import replace_section
    from .run import RESULTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-r", "--runs", type=int, default=4)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    figures = run(args.runs)
    if save(figures, "atomic.json", write=not args.no_write):
        chaos = json.loads((RESULTS / "chaos.json").read_text())
        replace_section(ROOT / "BENCHMARKS.md", render(chaos))
        print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
