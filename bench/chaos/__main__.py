"""``python -m bench.chaos``: run the experiments, print their figures, store them."""

from __future__ import annotations

import argparse
import json
import time

from .ledger import Figures
from .suite import NAMES, run_experiments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "names",
        nargs="*",
        default=list(NAMES),
        metavar="EXPERIMENT",
        help=f"any of {', '.join(NAMES)} (default: all)",
    )
    parser.add_argument("--short", action="store_true", help="the shortened forms the tests run")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        parser.error(
            f"unknown experiment(s) {', '.join(unknown)} (experiments: {', '.join(NAMES)})"
        )
    began = time.monotonic()

    def show(figures: Figures) -> None:
        print(f"{time.monotonic() - began:6.0f}s  {figures.line()}", flush=True)

    results = run_experiments(args.names, args.short, show)
    failed = [f.experiment for f in results if not f.passed]
    print(
        f"{len(results) - len(failed)}/{len(results)} experiments passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    if not args.no_write and not args.short:
        _store(results)
    return 1 if failed else 0


def _store(results: list[Figures]) -> None:
    import subprocess

    from ..harness import ROOT
    from ..report import replace_section
    from ..run import RESULTS, machine
    from . import render

    code = subprocess.run(
        ["git", "log", "-1", "--format=%h %s"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    path = RESULTS / "chaos.json"
    # a run of some experiments replaces their rows and keeps the others' last figures
    old = json.loads(path.read_text()) if path.exists() else {"results": []}
    kept = [{"code": old.get("code", "?"), **r} for r in old["results"]]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    previous = {(r.get("key"), r["experiment"]): r for r in kept}
    fresh = [{**f.to_dict(), "code": code, "when": when} for f in results]
    for row in fresh:  # earlier runs stay visible: a fault that loses tasks now and then
        old_row = previous.get((row["key"], row["experiment"]))
        if old_row is not None:
            row["history"] = [*old_row.get("history", []), _compact(old_row)]
    rerun = {r["key"] for r in fresh}
    merged = [r for r in kept if r.get("key") not in rerun] + fresh
    merged.sort(key=lambda r: NAMES.index(r["key"]) if r.get("key") in NAMES else len(NAMES))
    data = {"machine": machine(), "results": merged}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    replace_section(ROOT / "BENCHMARKS.md", render(data))
    print("wrote bench/results/chaos.json and BENCHMARKS.md")


def _compact(row: dict[str, object]) -> dict[str, object]:
    return {k: row.get(k) for k in ("when", "code", "submitted", "lost", "rerun", "passed")}


if __name__ == "__main__":
    raise SystemExit(main())
