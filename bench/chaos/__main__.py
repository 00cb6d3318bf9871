"""``python -m bench.chaos``: run the experiments, print their figures, store them."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from .ledger import Figures

# name → (profiles of the cluster it needs, full run, short run)
Runner = Callable[[Any], Figures]


def experiments(short: bool) -> dict[str, tuple[tuple[str, ...], Runner]]:
    from .experiments import cpu_child_kill, io_worker_kill, redis_kill, redis_pause
    from .leaders import beat_failover, poison_task

    main = ("io", "io", "cpu", "control")
    return {
        "io_kill": (main, lambda c: io_worker_kill(c, kills=2 if short else 8)),
        "cpu_kill": (main, lambda c: cpu_child_kill(c, kills=2 if short else 8)),
        "poison": (main, lambda c: poison_task(c, neighbours=6 if short else 20)),
        "redis_kill": (main, lambda c: redis_kill(c, down=3.0 if short else 5.0)),
        # longer than every client timeout: the app's Redis clients (5 s), kombu's (30 s)
        "redis_pause": (main, lambda c: redis_pause(c, paused=7.0 if short else 35.0)),
        "beats2": (("control",), lambda c: beat_failover(c, beats=2, kills=1 if short else 3)),
        "beats3": (("control",), lambda c: beat_failover(c, beats=3, kills=1 if short else 3)),
    }


def embedded(short: bool) -> Figures:
    from .leaders import embedded_redis_kill

    return embedded_redis_kill(down_patience=20.0 if short else 60.0)


NAMES = ("io_kill", "cpu_kill", "poison", "redis_kill", "redis_pause", "redis_kill_embedded",
         "beats2", "beats3")


def run_experiments(names: list[str], short: bool,
                    on_result: Callable[[str, Figures], None] = lambda n, f: None) -> list[Figures]:
    """Run ``names`` in order, one cluster for consecutive experiments that share its shape;
    a broker experiment comes last on its cluster (it may leave workers dead)."""
    from .experiments import cluster

    table = experiments(short)
    out: list[Figures] = []
    i = 0
    while i < len(names):
        if names[i] == "redis_kill_embedded":
            figures = embedded(short)
            figures.key = names[i]
            on_result(names[i], figures)
            out.append(figures)
            i += 1
            continue
        profiles = table[names[i]][0]
        group = [names[i]]
        while (i + len(group) < len(names) and names[i + len(group)] in table
               and table[names[i + len(group)]][0] == profiles
               and not names[i + len(group) - 1].startswith("redis_")):
            group.append(names[i + len(group)])
        with cluster(profiles) as c:
            for name in group:
                figures = table[name][1](c)
                figures.key = name
                on_result(name, figures)
                out.append(figures)
        i += len(group)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("names", nargs="*", default=list(NAMES), metavar="EXPERIMENT",
                        help=f"any of {', '.join(NAMES)} (default: all)")
    parser.add_argument("--short", action="store_true", help="the shortened forms the tests run")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)} (experiments: {', '.join(NAMES)})")
    began = time.monotonic()

    def show(name: str, figures: Figures) -> None:
        print(f"{time.monotonic() - began:6.0f}s  {figures.line()}", flush=True)

    results = run_experiments(args.names, args.short, show)
    failed = [f.experiment for f in results if not f.passed]
    print(f"{len(results) - len(failed)}/{len(results)} experiments passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if not args.no_write and not args.short:
        _store(results)
    return 1 if failed else 0


def _store(results: list[Figures]) -> None:
    import subprocess

    from ..harness import ROOT
    from ..report import write_markdown
    from ..run import RESULTS, machine

    code = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    data = {"machine": machine(), "code": code, "results": [f.to_dict() for f in results]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chaos.json").write_text(json.dumps(data, indent=1))
    write_markdown(RESULTS, ROOT / "BENCHMARKS.md")
    print("wrote bench/results/chaos.json and BENCHMARKS.md")


if __name__ == "__main__":
    raise SystemExit(main())
