"""Imports point one way (DESIGN.md, "Layers"): an allow-list for every package and top-level
module, read from every import statement — module level, inside functions, under
``TYPE_CHECKING`` — so a function-level import cannot hide a broken arrow.

    cli/ ──► producer/ ──► infra/ ──► (celery, redis, sqlalchemy, kombu)
    workers/ (thin entry), beat_schedule.py (jobs as data) ──► infra/
    tasks/ ──► domain/, storage/, infra/
    storage/ ──► domain/ (dataclasses only); receives its settings, never reads them
    domain/ ──► errors.py and plain libraries — never celery, redis, sqlalchemy

One arrow beyond that diagram: ``cli/`` and ``producer/`` also reach ``storage/``'s repository
functions, for a job's own rows and for listings (ALLOWED says why). Layers not drawn there:
``monitor/`` is a server that reads infra (metrics, alert state) and
renders domain values; ``report/`` renders bench reports from stored runs. Imports of other
third-party and standard libraries are not layered, except the infrastructure libraries in
:data:`INFRA_LIBS`, which each layer must be allowed.

Where today's code still breaks an arrow, the import is named in :data:`KNOWN_EXCEPTIONS`
with the reason; the list may only shrink (a stale entry fails too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG_NAME = "lewis_tasks"
INFRA_LIBS = frozenset({"celery", "kombu", "redis", "sqlalchemy", "alembic"})
TOP_LEVEL = frozenset({"workers", "beat_schedule"})

# layer → the layers and infrastructure libraries it may import (its own layer always).
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "domain": frozenset({"errors"}),
    "storage": frozenset({"domain", "errors", "sqlalchemy", "alembic"}),
    # infra adapts pure domain values and functions to settings, Celery and Redis
    # (infra/planning.py hands settings to domain/planning.py): the arrow that matters is
    # that domain never imports infra
    "infra": frozenset({"domain", "errors", "celery", "kombu", "redis", "sqlalchemy"}),
    "tasks": frozenset({"domain", "storage", "infra", "errors", "celery", "redis"}),
    # handles return domain values (ScanReport…) and wrap Celery's AsyncResult. Beyond
    # DESIGN.md's diagram (which draws no route for them): a job's own rows are the
    # producer's to write and read — a scan or batch row is created at submit, before any
    # worker has the job, and its report is read back from rows — through storage's
    # repository functions (never SQL of its own), on an engine from infra.database
    "producer": frozenset({"infra", "domain", "storage", "errors", "celery"}),
    # the CLI renders domain values, starts the monitor server and renders bench reports;
    # its listings and imports (`lewis scans list`, `alerts`, `scale` history, `vulns import`,
    # `db upgrade`, `status`'s stored heartbeats) read and write storage the same way
    "cli": frozenset(
        {"producer", "infra", "domain", "storage", "errors", "monitor", "report", "celery"}
    ),
    "monitor": frozenset({"infra", "domain", "errors"}),
    "report": frozenset({"domain", "storage", "infra", "errors"}),
    "lewis_tasks": frozenset(),  # the package's own __init__
    "workers": frozenset({"infra"}),
    "beat_schedule": frozenset({"infra"}),
}

# (file, imported module) → why it is still there. Remove an entry when its import goes.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {
    # -- `python -m workers` is `lewis worker`: the CLI holds the placeholder-password refusal,
    #    node naming and exit codes the entry must share
    ("workers/__main__.py", "lewis_tasks.cli"): "same command as `lewis worker`",
}


def layer_of_file(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[0] == PKG_NAME:
        return parts[1] if len(parts) > 1 and parts[1] != "__init__" else PKG_NAME
    return parts[0]


def layer_of_module(name: str) -> str | None:
    """The layer or infrastructure library ``name`` belongs to; None: not layered."""
    parts = name.split(".")
    if parts[0] == PKG_NAME:
        return parts[1] if len(parts) > 1 else PKG_NAME
    if parts[0] in TOP_LEVEL or parts[0] in INFRA_LIBS:
        return parts[0]
    return None


def imported_modules(path: Path, root: Path = ROOT) -> list[str]:
    """Every module ``path`` imports, anywhere in it (``from m import a`` gives ``m.a``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(root).with_suffix("").parts
    package = list(rel[:-1])  # a module's package; an __init__'s package is its own folder
    names: list[str] = []
    for node in ast.walk(tree):  # walks function bodies too
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def layered_files(root: Path = ROOT) -> list[Path]:
    files = sorted((root / PKG_NAME).rglob("*.py"))
    for name in sorted(TOP_LEVEL):
        files += sorted((root / name).rglob("*.py")) or [root / f"{name}.py"]
    return [f for f in files if f.exists()]


def broken_arrows(root: Path = ROOT) -> list[tuple[str, str]]:
    """(file, imported module) for every import outside the importing layer's allow-list."""
    bad = []
    for path in layered_files(root):
        own = layer_of_file(path, root)
        for name in imported_modules(path, root):
            target = layer_of_module(name)
            if target is not None and target != own and target not in ALLOWED[own]:
                bad.append((str(path.relative_to(root)), name))
    return bad


def _excepted(file: str, name: str) -> bool:
    return any(file == f and (name == m or name.startswith(m + ".")) for f, m in KNOWN_EXCEPTIONS)


def test_every_layer_is_on_the_allow_list() -> None:
    layers = {layer_of_file(f) for f in layered_files()}
    assert layers <= set(ALLOWED), f"layers without an allow-list: {layers - set(ALLOWED)}"
    assert {
        "cli",
        "producer",
        "infra",
        "tasks",
        "storage",
        "domain",
        "monitor",
        "report",
        "errors",
        "workers",
        "beat_schedule",
    } <= layers


def test_imports_point_one_way() -> None:
    bad = [f"{f} imports {name}" for f, name in broken_arrows() if not _excepted(f, name)]
    assert bad == []


def test_known_exceptions_are_still_needed() -> None:
    # the list only shrinks: an exception whose import is gone must leave it
    arrows = broken_arrows()
    stale = [
        key
        for key in KNOWN_EXCEPTIONS
        if not any(f == key[0] and (n == key[1] or n.startswith(key[1] + ".")) for f, n in arrows)
    ]
    assert stale == []


def test_the_check_sees_relative_imports() -> None:
    # `from ..errors import x` inside domain/ resolves to lewis_tasks.errors
    assert any(
        n.startswith("lewis_tasks.errors")
        for n in imported_modules(ROOT / PKG_NAME / "domain" / "scope.py")
    )


@pytest.mark.parametrize(
    "body, module",
    [
        ("def f():\n    from ..infra import config\n", "lewis_tasks.infra.config"),
        ("def f():\n    import celery.result\n", "celery.result"),
        (
            "class C:\n    def m(self):\n        from lewis_tasks.storage.db import get_engine\n",
            "lewis_tasks.storage.db.get_engine",
        ),
        ("def f():\n    from .. import tasks\n", "lewis_tasks.tasks"),
    ],
)
def test_the_check_fails_on_an_import_inside_a_function(
    tmp_path: Path, body: str, module: str
) -> None:
    # Given a domain module whose only offending import sits inside a function
    domain = tmp_path / PKG_NAME / "domain"
    domain.mkdir(parents=True)
    (domain / "bad.py").write_text(body)
    (tmp_path / PKG_NAME / "errors.py").write_text("")
    # Then the check reports it
    assert broken_arrows(tmp_path) == [(f"{PKG_NAME}/domain/bad.py", module)]


def test_a_top_level_entry_may_not_skip_infra(tmp_path: Path) -> None:
    (tmp_path / PKG_NAME).mkdir()
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "__main__.py").write_text(
        "def main():\n    from lewis_tasks.tasks.scan import merge\n"
    )
    assert broken_arrows(tmp_path) == [("workers/__main__.py", "lewis_tasks.tasks.scan.merge")]


def test_the_benchmark_targets_the_cli_names_are_the_ones_workers_register() -> None:
    # the CLI runs every benchmark target by name without importing tasks/
    from lewis_tasks.domain.benchtargets import target_names
    from lewis_tasks.tasks.profile import BENCHMARKABLE

    assert set(target_names()) <= set(BENCHMARKABLE.names())
