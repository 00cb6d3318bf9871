"""The atomic take against kombu's BRPOP: what taking and recording in one step costs.

    python -m bench.atomic          # 4 runs of each side, interleaved (AB BA AB BA), medians
    python -m bench.atomic -r 6

Both sides are ``lewis worker io`` as shipped on the same private Redis, one with
``broker.atomic_take`` (the default), one with it off (kombu's BRPOP, then ``QoS.append``'s
pipeline): the platform suite's no-op round trip (p50 / p99, one worker) and io drain (10,000
no-ops, 2 workers). Prints only; the figures go to BENCHMARKS.md by hand
(docs/atomic-unacked.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from . import platform as plat
from .harness import median, private_redis

SIDES = {"atomic": "true", "brpop": "false"}


def run(runs: int) -> dict[str, dict[str, list[float]]]:
    figures: dict[str, dict[str, list[float]]] = {side: {} for side in SIDES}
    with private_redis() as server, tempfile.TemporaryDirectory() as tmp:
        systems = {}
        for side, value in SIDES.items():
            systems[side] = plat.System("lewis", server, Path(tmp))
            systems[side].env["LEWIS_BROKER_ATOMIC_TAKE"] = value
        for i in range(runs):
            # AB BA …: drift over the run hits both sides alike
            for side in (list(SIDES) if i % 2 == 0 else list(reversed(SIDES))):
                latency = plat.bench_latency(systems[side])
                drain = plat.bench_drain(systems[side], "noop_io")
                sample = {"p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"],
                          "drain_per_s": drain["tasks_per_s"]}
                for key, value in sample.items():
                    figures[side].setdefault(key, []).append(value)
                print(f"  run {i + 1} {side:<7} {json.dumps({k: round(v, 3) for k, v in sample.items()})}",
                      flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-r", "--runs", type=int, default=4)
    args = parser.parse_args(argv)
    figures = run(args.runs)
    summary: dict[str, Any] = {side: {k: round(median(v), 3) for k, v in measures.items()}
                               for side, measures in figures.items()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
