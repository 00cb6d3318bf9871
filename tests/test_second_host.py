"""A second "host": workers started from another working directory (no stack.json there) on
the same Redis and PostgreSQL join a running scan, take their share, drain without a killed
task, answer `lewis health`, and every process stays within its database connection budget."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from lewis_tasks.domain.planning import MIN_CHUNK_PORTS
from lewis_tasks.infra.database import ROLE_POOLS
from tests.conftest import stack_env
from tests.support.procs import chunks_run, lewis_env, lewis_process, wait_for, worker_names

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

HOST = socket.gethostname()
HOSTS = 10
PORTS = 65535
PG = (
    os.environ.get("LEWIS_TEST_DATABASE_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    admin_url = make_url(PG).set(drivername="postgresql+psycopg")
    admin = create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    name = f"lewis_fleet_{secrets.token_hex(5)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.skip(f"PostgreSQL unreachable at {admin_url.render_as_string()}: {exc}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def host_process(
    args: list[str], env: dict[str, str], cwd: Path, log: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """`lewis ARGS` run from ``cwd``, the way a second machine's checkout would."""
    return lewis_process(args, env, log, cwd=cwd)


def run_lewis(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "lewis_tasks.cli", *args],
        cwd=cwd,
        env=lewis_env(env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


class ConnectionSampler:
    """pg_stat_activity every 0.1 s: the most connections each lewis-<role>-<pid> held."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, poolclass=NullPool)
        self.peaks: dict[str, int] = {}
        self.total_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(10)
        self.engine.dispose()

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    text(
                        "SELECT application_name, count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name LIKE 'lewis-%' "
                        "GROUP BY application_name"
                    )
                ).all()
                for name, count in rows:
                    self.peaks[name] = max(self.peaks.get(name, 0), count)
                self.total_peak = max(self.total_peak, sum(c for _, c in rows))
                conn.rollback()
                self._stop.wait(0.1)


def test_a_second_host_joins_shares_drains_and_stays_in_budget(
    redis_url: str, tmp_path: Path, lewis_settings: Any, celery_app: Any, pg_url: str
) -> None:
    from lewis_tasks.cli.db import upgrade_database as upgrade
    from lewis_tasks.infra import config
    from lewis_tasks.infra.database import dispose_engines
    from lewis_tasks.producer.scan import submit_scan

    a_dir, b_dir = tmp_path / "host-a", tmp_path / "host-b"
    a_dir.mkdir()
    b_dir.mkdir()
    common = {
        "LEWIS_DATABASE_URL": pg_url,
        "LEWIS_TASKS_TIME_LIMIT": "360",
        "LEWIS_TASKS_SOFT_TIME_LIMIT": "300",
        "LEWIS_BROKER_VISIBILITY_TIMEOUT": "400",
        "LEWIS_SCAN_CHUNK_PORTS": str(-(-HOSTS * PORTS // 48)),
    }
    # each host its own working directory and stack home: no stack.json, everything by URL
    env_a = stack_env(redis_url, a_dir, **common, LEWIS_STACK_HOME=str(a_dir / ".lewis"))
    env_b = stack_env(redis_url, b_dir, **common, LEWIS_STACK_HOME=str(b_dir / ".lewis"))
    upgrade(pg_url)
    settings = config.load_settings(env=env_a, cwd=a_dir)
    previous = config.get_settings()
    config.set_settings(settings)
    a_io, b_io = a_dir / "io.log", b_dir / "io.log"
    try:
        with (
            ConnectionSampler(pg_url) as sampler,
            host_process(
                ["worker", "cpu", "-c", "1", "-n", "a-cpu@%h"], env_a, a_dir, a_dir / "cpu.log"
            ),
            host_process(["worker", "io", "-n", "a-io@%h"], env_a, a_dir, a_io),
        ):
            wait_for(
                lambda: {n.split("@")[0] for n in worker_names(celery_app)} >= {"a-cpu", "a-io"},
                60,
                what="host A's workers",
            )
            targets = [f"127.0.0.{i}" for i in range(1, HOSTS + 1)]
            # Given a long scan running on host A
            first = submit_scan(targets, f"1-{PORTS}", services=False)
            total = first.progress().chunks_total
            wait_for(
                lambda: first.progress().chunks_done >= total // 4,
                120,
                interval=0.05,
                what="a quarter of the scan",
            )
            # When host B's io worker joins a quarter in
            with host_process(["worker", "io", "-n", "b-io@%h"], env_b, b_dir, b_io) as b_proc:
                wait_for(
                    lambda: run_lewis(env_b, b_dir, "health", "--worker", f"b-io@{HOST}")[0] == 0,
                    60,
                    interval=0.05,
                    what="host B's io worker",
                )
                done_when_b_came = first.progress().chunks_done
                # Then `lewis health` answers from host B's directory
                assert run_lewis(env_b, b_dir, "health", "--queue", "io")[0] == 0
                assert first.wait(timeout=300).progress.chunks_done == total
                by_a, by_b = chunks_run(a_io, first.id), chunks_run(b_io, first.id)
                assert len(by_a | by_b) == total and not by_a & by_b
                rest = total - done_when_b_came
                # a fair share of the rest is half, less the wave of chunks the first worker had
                # already started (measured: 46-50 % on a quiet machine, 37 % once under heavy
                # load, when B's first chunk starts later); before fair shares it got 0 of 48
                assert len(by_b) * 3 >= rest, (total, done_when_b_came, len(by_b))
                # and a second scan, drained on host B halfway: its running chunks finish
                second = submit_scan(targets, f"1-{PORTS}", services=False)
                wait_for(
                    lambda: len(chunks_run(b_io, second.id)) > 0,
                    120,
                    interval=0.05,
                    what="host B working on the second scan",
                )
                code, out = run_lewis(
                    env_b, b_dir, "drain", "--worker", f"b-io@{HOST}", "--timeout", "120"
                )
                assert code == 0 and "drained: 1 worker(s) exited" in out, out
                assert b_proc.wait(30) == 0  # warm exit
            report = second.wait(timeout=300)
            # (cut for both hosts' io slots: the workers online when it was submitted; more
            # chunks than the first scan's, unless that one already had the most the planner
            # cuts: MIN_CHUNK_PORTS per chunk, as when other workers' records were online)
            assert report.status == "done"
            most = HOSTS * -(-PORTS // MIN_CHUNK_PORTS)
            assert report.progress.chunks_done == report.progress.chunks_total
            assert report.progress.chunks_total > total or total == most, (total, most)
            b_log = b_io.read_text()
            assert "drained: every accepted task finished" in b_log
            assert "WorkerLostError" not in b_log and "Retry in" not in b_log
    finally:
        config.set_settings(previous)
        dispose_engines()
    # every process within its role's budget; the whole fleet within their sum
    budget = {role: size + overflow for role, (size, overflow) in ROLE_POOLS.items()}
    print(
        "peak connections per process:",
        dict(sorted(sampler.peaks.items())),
        "total peak:",
        sampler.total_peak,
    )
    assert sampler.peaks, "no lewis connection was ever seen"
    for name, peak in sampler.peaks.items():
        role = name.split("-")[1]
        assert peak <= budget[role], (name, peak, budget[role])
    assert sampler.total_peak <= 2 * budget["io"] + 2 * budget["cpu"] + budget["command"] + 2
