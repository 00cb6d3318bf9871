"""Issue 20: `lewis scan HOST -p PORTS` (one chunk or a chord of them, issue 18) and `lewis http
URL` start like command-line tools — they load neither Celery nor SQLAlchemy — and still answer
and store what they did.

Each command runs as its own process (as from the shell) against the embedded worker, and at
exit reports the modules it had loaded; the scan is then read back as `lewis scans list` and
`lewis scans show` read it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.httpservers import serving, sha256_of
from tests.support.procs import ROOT, lewis_env

HEAVY = ("sqlalchemy", "celery", "kombu")
# run `lewis ARGS` as the console script does, then write the loaded modules to argv[1]
REPORTER = (
    "import atexit, json, runpy, sys\n"
    "out = sys.argv[1]\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "sys.argv = ['lewis', *sys.argv[2:]]\n"
    "runpy.run_module('lewis_tasks.cli', run_name='__main__')\n"
)


@pytest.fixture(scope="module")
def celery_worker(
    celery_app: Any, celery_includes: Any, celery_worker_pool: Any, celery_worker_parameters: Any
) -> Iterator[Any]:
    from celery.contrib.testing import worker

    with worker.start_worker(celery_app, pool=celery_worker_pool, **celery_worker_parameters) as w:
        yield w


@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[str, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()
    finally:
        sock.close()


def lewis(settings: Any, tmp_path: Path, *args: str) -> tuple[Any, set[str]]:
    """Run ``lewis ARGS`` in a fresh process: (the finished process, the top-level packages
    and the ``lewis_tasks.cli`` modules it loaded)."""
    env = lewis_env(
        {
            "LEWIS_BROKER_URL": settings.broker.url,
            "LEWIS_DATABASE_URL": settings.database.url,
            "LEWIS_STACK_HOME": str(settings.stack.home),
        }
    )
    modules = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", REPORTER, str(modules), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    names = json.loads(modules.read_text())
    loaded = {n.split(".")[0] for n in names} | {
        n for n in names if n.startswith("lewis_tasks.cli.")
    }
    return proc, loaded


@pytest.mark.parametrize("ports", ["one", "three", "chord"])
def test_a_lewis_scan_loads_neither_celery_nor_sqlalchemy(
    celery_worker: Any,
    lewis_settings: Any,
    listener: tuple[str, int],
    tmp_path: Path,
    ports: str,
) -> None:
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.producer.scanreport import load_scan_report
    from lewis_tasks.storage import scans
    from lewis_tasks.storage.db import session_scope

    address, port = listener
    spec = {
        "one": str(port),
        "three": f"{port - 1},{port},{port + 1}",
        "chord": f"{port - 4999}-{port}",  # chunks of at least 2,048 ports: a chord of 3
    }[ports]
    proc, loaded = lewis(
        lewis_settings, tmp_path, "scan", address, "-p", spec, "--no-services", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # Then the report is exact …
    assert report["status"] == "done"
    assert (report["progress"]["chunks_total"] > 1) == (ports == "chord")
    found = [p["port"] for h in report["hosts"] for p in h["open_ports"]]
    assert found == [port] if ports != "chord" else port in found
    # … the command loaded no Celery and no SQLAlchemy, nor other commands' modules …
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert "lewis_tasks.cli.http" not in loaded and "lewis_tasks.cli.profile" not in loaded
    # … and the scan is stored as `lewis scans list` and `lewis scans show` read it
    with session_scope(get_engine()) as session:
        listed = [s.id for s in scans.list_scans(session, limit=1000)]
    assert report["scan_id"] in listed
    stored = load_scan_report(report["scan_id"])
    assert stored is not None and stored.to_dict() == report


def test_lewis_http_of_one_url_loads_neither_celery_nor_sqlalchemy(
    celery_worker: Any, lewis_settings: Any, tmp_path: Path
) -> None:
    with serving() as thread:
        url = thread.start("app", "127.0.0.1").url + "/bytes/100"
        proc, loaded = lewis(lewis_settings, tmp_path, "http", url, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    (row,) = data["results"]
    assert (row["status"], row["bytes"], row["sha256"]) == (200, 100, sha256_of(100))
    assert data["summary"]["ok"] == 1
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_every_command_is_looked_up_in_the_module_that_adds_it() -> None:
    from lewis_tasks.cli import COMMAND_MODULES, _load_all, cli

    _load_all()
    added = {name: c.callback.__module__ for name, c in cli.commands.items() if c.callback}
    assert {n: f"lewis_tasks.cli.{m}" for n, m in COMMAND_MODULES.items()} == added
