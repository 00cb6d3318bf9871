"""Imports point one way (DESIGN.md): domain/ never reaches Celery, Redis, SQLAlchemy or infra;
storage/ never reaches Celery or infra beyond settings; producer/ never imports tasks/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lewis_tasks"
FORBIDDEN = {
    "domain": ("celery", "kombu", "redis", "sqlalchemy", "alembic", "lewis_tasks.infra",
               "lewis_tasks.storage", "lewis_tasks.tasks", "lewis_tasks.cli", "lewis_tasks.producer"),
    "storage": ("celery", "kombu", "lewis_tasks.tasks", "lewis_tasks.cli", "lewis_tasks.producer"),
    # producers name tasks by string; what they share with them (planning, keys) lives in infra
    "producer": ("lewis_tasks.tasks", "lewis_tasks.cli"),
}


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.append(".".join([*base, node.module] if node.module else base))
            elif node.module:
                names.append(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer: str) -> None:
    files = sorted((PKG / layer).rglob("*.py"))
    assert files, f"no modules in {layer}/"
    bad = [f"{f.relative_to(PKG)} imports {name}"
           for f in files for name in imported_modules(f)
           if any(name == p or name.startswith(p + ".") for p in FORBIDDEN[layer])]
    assert bad == []


def test_the_check_sees_relative_imports(tmp_path: Path) -> None:
    # The rule must catch `from ..infra import x` inside domain/, not just absolute imports.
    sample = PKG / "domain" / "scope.py"
    assert "lewis_tasks.errors" in imported_modules(sample)
