"""Bad input at the command line: one line, the right exit code, nothing left behind, no hang."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lewis_tasks.cli.db import upgrade_database as upgrade
from lewis_tasks.infra.redis_server import free_port
from tests.test_cli import lewis


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_lewis_yaml_that_is_not_utf8_is_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "lewis.yaml").write_bytes(b"network:\n  max_connections: 5\n# \xe9t\xe9\n")
    result = lewis("status", env={"CWD": str(tmp_path), "LEWIS_STACK_HOME": str(tmp_path)})
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith("lewis: configuration error: config file ")
    assert "lewis.yaml: not UTF-8 text" in line


@pytest.mark.parametrize("url", ["foo://127.0.0.1:1/0", "amqp://guest:s3cret@127.0.0.1//"])
def test_a_worker_with_an_unknown_broker_scheme_is_one_line_naming_the_key(
    url: str, tmp_path: Path
) -> None:
    # Given a broker URL kombu has no transport for (today: a 64-line KeyError from celery)
    result = lewis("worker", "io", env={"LEWIS_BROKER_URL": url, "LEWIS_STACK_HOME": str(tmp_path)})
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert "setting broker.url:" in line and "is not a Redis URL" in line
    assert "s3cret" not in line


def test_a_scan_against_a_closed_broker_port_fails_in_one_line_and_writes_no_row(
    tmp_path: Path,
) -> None:
    # Given a migrated database and a broker URL on a port nothing listens on
    db = tmp_path / "lewis.db"
    upgrade(f"sqlite:///{db}")
    env = {
        "LEWIS_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "LEWIS_DATABASE_URL": f"sqlite:///{db}",
        "LEWIS_STACK_HOME": str(tmp_path),
        "LEWIS_MONITORING_PING_TIMEOUT": "0.5",
    }
    # When a scan is submitted
    result = lewis("scan", "127.0.0.1", "-p", "80", env=env)
    # Then it is refused at once as an unreachable broker (exit 3), in one line naming the
    # bound it waited, and no scan row says "failed: not enqueued" (today: ~20 s of Celery
    # result-backend retries, a 3-line RuntimeError and a failed scan row)
    assert result.returncode == 3, result.stderr
    line = _one_line(result.stderr)
    assert "is unreachable (no answer within 0.5 s)" in line
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from scans").fetchone() == (0,)


@pytest.mark.parametrize(
    "args",
    [
        ["scan", "127.0.0.1", "--timeout"],
        ["profile", "lewis.bench.noop", "--timeout"],
        ["profile", "lewis.bench.noop", "--max-seconds"],
        ["diagnose", "--timeout"],
        ["diagnose", "--interval"],
        ["status", "--timeout"],
        ["up", "--timeout"],
        ["http", "http://127.0.0.1:1/", "--timeout"],
        ["http", "http://127.0.0.1:1/", "--wait"],
    ],
)
@pytest.mark.parametrize("value", ["-1", "-0.5", "nan", "inf"])
def test_a_negative_or_not_finite_timeout_is_a_usage_error(
    args: list[str], value: str, tmp_path: Path
) -> None:
    # (a NaN deadline compares false with every clock reading: `scan --timeout nan` waited forever)
    result = lewis(*args, value, env={"LEWIS_STACK_HOME": str(tmp_path)}, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"Invalid value for '{args[-1]}'" in result.stderr
    assert "Traceback" not in result.stderr
