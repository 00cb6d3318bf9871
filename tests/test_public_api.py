"""The public producer API is importable from the package root, lazily."""

from __future__ import annotations

import subprocess
import sys

import lewis_tasks
from lewis_tasks import producer


def test_every_exported_name_resolves() -> None:
    for name in producer.__all__:
        assert getattr(lewis_tasks, name) is getattr(producer, name)
    assert callable(lewis_tasks.submit_scan) and callable(lewis_tasks.submit_http_batch)


def test_a_domain_import_does_not_load_celery() -> None:
    code = "import sys, lewis_tasks.domain.scope; print('celery' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
