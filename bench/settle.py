"""Fewer Redis round trips per io message (issue 18.2): the batch take and the settled ack.

    python -m bench.settle          # 4 runs of each side, interleaved (ABCD DCBA …), medians
    python -m bench.settle -r 6

Each side is ``lewis worker io`` as shipped on the same private Redis, with one setting
changed: *shipped* (``broker.take_batch`` 16, ``broker.settle_with_result`` on), *one take*
(``take_batch=1``: a message per take), *own ack* (``settle_with_result=false``: Celery's
late ack, a round trip of its own) and *neither* (both off: the path before issue 18.2's
cuts). Measures: the platform suite's no-op round trip (p50 / p99, one worker) and io drain
(10,000 no-ops, 2 workers), and its 2,000 unpacked 50 ms waits (2 workers). Writes ``bench/results/settle.json``; BENCHMARKS.md's issue 18.2
section quotes it.
"""

from __future__ import annotations

import argparse

from .atomic import run, save

SIDES = {
    "shipped": {},
    "one_take": {"LEWIS_BROKER_TAKE_BATCH": "1"},
    "own_ack": {"LEWIS_BROKER_SETTLE_WITH_RESULT": "false"},
    "neither": {"LEWIS_BROKER_TAKE_BATCH": "1", "LEWIS_BROKER_SETTLE_WITH_RESULT": "false"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-r", "--runs", type=int, default=4)
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    sides = {name: SIDES[name] for name in args.sides.split(",")}
    save(run(args.runs, sides, waits=True), "settle.json", write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
