"""Mutation run: each module against its own tests, scored net of equivalent mutants.

``scripts/mutation [MODULE…]`` runs mutmut (pinned in the dev extra, configured in
``pyproject.toml`` ``[tool.mutmut]``) once per module, with ``only_mutate`` narrowed to that
module and the test selection narrowed to the test files ``[tool.lewis.mutation]`` maps it to,
so a score is earned by the module's own tests and not by a caller's. Each run starts from a
fresh ``mutants/`` (mutmut's working copy), so two runs of the same commit give the same
counts. Surviving mutants that no input can tell apart from the original are listed, with the
reason, in ``tests/mutation-equivalent.toml``; the score is killed / (total − equivalent).
An entry counts only while its mutant still exists, still survives and still makes the same
change; anything else is reported as stale, so the list cannot hide a real gap.

Exit status: 0 when every module meets its goal (or ``--min-score``), 1 when one falls short,
2 on a usage or run error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "lewis_tasks"
EQUIVALENT_FILE = ROOT / "tests" / "mutation-equivalent.toml"
CI_MODULES = ("domain/scope.py",)

# Runs inside the child: mutmut reads its config once into a module global, so narrowing it
# there (before the CLI starts) is how one pyproject serves a per-module run. It leans on
# mutmut's _load_config/_config, which is why mutmut is pinned (3.8.1).
_CHILD = """
import sys
import mutmut.configuration as conf
cfg = conf._load_config()
cfg.only_mutate = [sys.argv[1]]
cfg.pytest_add_cli_args_test_selection = sys.argv[2].split(",")
conf._config = cfg
from mutmut.__main__ import cli
cli(["run", "--max-children", sys.argv[3], *sys.argv[4:]])
"""

# mutmut's names for a mutant's outcome → ours; any other (suspicious, segfault, skipped, …)
# is reported under mutmut's own name and, like these three, does not count as killed.
_RENAMED = {"no tests": "untested", "check was interrupted by user": "interrupted"}
_MAIN = ("killed", "survived", "timeout", "untested")


@dataclass(frozen=True)
class Module:
    path: str  # under lewis_tasks/, e.g. "domain/scope.py"
    tests: tuple[str, ...]
    goal: float

    @property
    def source(self) -> str:
        return f"{PACKAGE}/{self.path}"

    @property
    def dotted(self) -> str:
        return f"{PACKAGE}.{self.path.removesuffix('.py').replace('/', '.')}"


@dataclass(frozen=True)
class Equivalent:
    module: str
    function: str
    was: str
    now: str
    reason: str
    mutant: str = ""


@dataclass
class Result:
    module: Module
    by_status: dict[str, list[str]] = field(default_factory=dict)
    equivalent: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return len(self.by_status.get(status, []))

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.by_status.values())

    @property
    def score(self) -> float:
        scored = self.total - len(self.equivalent)
        return 100.0 * self.count("killed") / scored if scored else 100.0


def load_modules() -> dict[str, Module]:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["lewis"]["mutation"]
    return {path: Module(path, _expand(spec["tests"]), float(spec["goal"]))
            for path, spec in table.items()}


def _expand(patterns: list[str]) -> tuple[str, ...]:
    """Test files named outright or by a glob (``tests/domain/test_scope*.py``), sorted, once each."""
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern)) or [pattern]
        found.extend(m for m in matches if m not in found)
    return tuple(found)


def load_equivalents() -> list[Equivalent]:
    if not EQUIVALENT_FILE.exists():
        return []
    data = tomllib.loads(EQUIVALENT_FILE.read_text())
    return [Equivalent(**entry) for entry in data.get("equivalent", [])]


def pick(modules: dict[str, Module], names: list[str]) -> list[Module]:
    """``scope``, ``scope.py``, ``domain/scope.py`` and ``lewis_tasks/domain/scope.py`` all name one module."""
    chosen: list[Module] = []
    for name in names:
        key = name.removeprefix(f"{PACKAGE}/")
        hits = [m for p, m in modules.items()
                if key in (p, p.removesuffix(".py")) or Path(p).stem == key or Path(p).name == key]
        if len(hits) != 1:
            _die(f"unknown module {name!r}; known: {', '.join(modules)}")
        chosen.append(hits[0])
    return chosen


def _die(message: str) -> NoReturn:
    print(f"mutation: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_module(module: Module, *, functions: list[str], children: int, log: Path) -> float:
    """One fresh mutmut run of ``module`` against its own tests; mutmut's chatter goes to ``log``."""
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    (ROOT / "mutants").mkdir()
    names = [f if "__mutmut_" in f else f"{module.dotted}.{_mangled(f)}__mutmut_*"
             for f in functions]
    started = time.monotonic()
    with log.open("w") as out:
        code = subprocess.call(
            [sys.executable, "-c", _CHILD, module.source, ",".join(module.tests), str(children),
             *names], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            # property tests run a few hundred examples per mutant, not the suite's 10,000:
            # every mutant reruns them, and the 10 s per-test timeout would kill clean runs
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HYPOTHESIS_PROFILE": "mutation"})
    if code != 0:
        _die(f"mutmut failed on {module.source} (exit {code}); see {log}")
    return time.monotonic() - started


def diff_of(mutant: str, module: Module) -> tuple[str, str]:
    """The changed source of one mutant as (original lines, mutated lines), stripped."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    was: list[str] = []
    now: list[str] = []
    for line in get_diff_for_mutant(mutant, path=Path(module.source)).splitlines()[2:]:
        if line.startswith("-"):
            was.append(line[1:].strip())
        elif line.startswith("+"):
            now.append(line[1:].strip())
    return " ".join(was), " ".join(now)


def _mangled(function: str) -> str:
    """mutmut's name for a function: ``x_parse_target``, or ``xǁClassǁmethod`` for a method."""
    if "." in function and "ǁ" not in function:
        function = "ǁ".join(function.split(".", 1))  # Class.method works too
    return f"xǁ{function}" if "ǁ" in function else f"x_{function}"


def function_of(mutant: str) -> str:
    """``x_parse_target`` → ``parse_target``; ``xǁLatencyHistogramǁrecord`` → ``LatencyHistogramǁrecord``."""
    name = mutant.rpartition(".")[2].partition("__mutmut_")[0]
    return name.removeprefix("x_") if name.startswith("x_") else name.removeprefix("xǁ")


def collect(module: Module, equivalents: list[Equivalent], functions: list[str]) -> Result:
    from mutmut.stats import status_by_exit_code

    meta = json.loads((ROOT / "mutants" / f"{module.source}.meta").read_text())
    result = Result(module)
    for mutant, code in sorted(meta["exit_code_by_key"].items(), key=lambda kv: _order(kv[0])):
        if code is None:
            continue  # not run: outside --function
        status = status_by_exit_code[code]
        result.by_status.setdefault(_RENAMED.get(status, status), []).append(mutant)
    chosen = {function_of(f"m.{_mangled(f)}__mutmut_0") for f in functions}
    mine = [e for e in equivalents
            if e.module == module.source and (not chosen or e.function in chosen)]
    claimed: set[Equivalent] = set()
    for mutant in result.by_status.get("survived", []):
        was, now = diff_of(mutant, module)
        for entry in mine:
            if entry.function == function_of(mutant) and entry.was == was and entry.now == now:
                result.equivalent.append(mutant)
                claimed.add(entry)
                break
    for entry in mine:
        if entry not in claimed:
            result.stale.append(f"{entry.function}: {entry.was!r} → {entry.now!r} "
                                "(no surviving mutant makes this change any more)")
    return result


def _order(mutant: str) -> tuple[str, int]:
    head, _, number = mutant.rpartition("__mutmut_")
    return head, int(number) if number.isdigit() else 0


def line_of(module: Module, mutant: str, was: str) -> int:
    """The source line a mutant changes: the first line of its function that ``was`` starts with."""
    lines = (ROOT / module.source).read_text().splitlines()
    name = function_of(mutant).rpartition("ǁ")[2]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith(
        (f"def {name}(", f"async def {name}("))), 0)
    for number in range(start, len(lines)):
        text = lines[number].strip()
        if text and was.startswith(text.split("  #")[0].rstrip()):
            return number + 1
    return 0


def report(result: Result, *, show: bool) -> None:
    m = result.module
    print(f"{m.source}  (tests: {', '.join(m.tests)})")
    print(f"  mutants {result.total}: killed {result.count('killed')}, "
          f"survived {result.count('survived')} ({len(result.equivalent)} equivalent), "
          f"timed out {result.count('timeout')}, untested {result.count('untested')}"
          + "".join(f", {status} {len(names)}" for status, names in result.by_status.items()
                    if status not in _MAIN))
    print(f"  score {result.score:.1f} % of non-equivalent mutants killed (goal {m.goal:g} %), "
          f"{result.seconds:.0f} s")
    for line in result.stale:
        print(f"  STALE equivalent entry: {line}")
    if show:
        for status in [s for s in result.by_status if s != "killed"]:
            for mutant in result.by_status.get(status, []):
                if mutant in result.equivalent:
                    continue
                was, now = diff_of(mutant, m)
                print(f"  {status}: {mutant} (line {line_of(m, mutant, was)})\n      - {was}\n      + {now}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to run (default: all mapped ones)")
    parser.add_argument("--min-score", type=float,
                        help="fail when a module scores below this (default: its own goal)")
    parser.add_argument("--ci", action="store_true",
                        help=f"the CI gate: {', '.join(CI_MODULES)} against its goal")
    parser.add_argument("--function", action="append", default=[], metavar="NAME",
                        help="only mutants of this function, e.g. parse_target or "
                             "LatencyHistogram.merge (repeatable; for iterating)")
    parser.add_argument("--show", action="store_true",
                        help="print each surviving / timed-out / untested mutant's change")
    parser.add_argument("--children", type=int, default=1,
                        help="parallel mutant runs (default 1: the machine is shared)")
    args = parser.parse_args(argv)

    os.chdir(ROOT)
    modules = load_modules()
    chosen = pick(modules, list(CI_MODULES) if args.ci else args.modules or list(modules))
    equivalents = load_equivalents()
    failed: list[str] = []
    for module in chosen:
        log = ROOT / "mutants" / "run.log"
        seconds = run_module(module, functions=args.function, children=args.children, log=log)
        result = collect(module, equivalents, args.function)
        result.seconds = seconds
        report(result, show=args.show)
        goal = args.min_score if args.min_score is not None else module.goal
        if not args.function and (result.score < goal or result.stale):
            failed.append(f"{module.source} {result.score:.1f} % < {goal:g} %"
                          if result.score < goal else f"{module.source}: stale equivalent entries")
    for line in failed:
        print(f"FAIL {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
