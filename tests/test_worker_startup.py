"""A worker that fails a start-up check exits 2 with one line, before it consumes anything.

Celery swallows exceptions raised in signal handlers (DESIGN.md, "Known traps"), so these
start a real ``lewis worker`` and look at its exit code, its output and the queue.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.utils.dispatch import Signal

from lewis_tasks.errors import ConfigError
from lewis_tasks.infra.signals import exit_on_failure
from tests.conftest import stack_env, with_db
from tests.support.procs import ROOT, lewis_env

STARTUP_DB = 5  # a db of its own: no other test's worker consumes this queue


def test_worker_refuses_a_visibility_timeout_below_a_hard_time_limit(
    redis_url: str, tmp_path: Path
) -> None:
    broker = with_db(redis_url, STARTUP_DB)
    client = redis.Redis.from_url(broker)
    client.flushdb()
    # Given a task already waiting in the io queue
    producer = Celery("producer", broker=broker)
    try:
        producer.send_task("lewis.bench.noop", queue="io", routing_key="io")
    finally:
        producer.close()
    assert client.llen("io") == 1
    # When an io worker starts with a visibility timeout shorter than the hard time limit
    env = stack_env(
        redis_url,
        tmp_path,
        LEWIS_BROKER_URL=broker,
        LEWIS_BROKER_VISIBILITY_TIMEOUT="10",
        LEWIS_TASKS_TIME_LIMIT="20",
        LEWIS_TASKS_SOFT_TIME_LIMIT="15",
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lewis_tasks.cli", "worker", "io"],
            cwd=ROOT,
            env=lewis_env(env),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=90,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the worker started despite the unsafe visibility timeout")
    try:
        # Then it exits 2 with one line naming both settings
        assert done.returncode == 2, done.stderr[-2000:]
        ours = [line for line in done.stderr.splitlines() if line.startswith("lewis:")]
        assert len(ours) == 1, done.stderr[-2000:]
        assert "broker.visibility_timeout" in ours[0] and "tasks.time_limit" in ours[0]
        assert "Traceback" not in done.stderr and "ready." not in done.stdout + done.stderr
        # and it never consumed: the task still waits, nothing was delivered to it
        assert client.llen("io") == 1
        assert client.hlen("unacked") == 0
    finally:
        client.flushdb()
        client.close()


def _raises(exc: Exception) -> Any:
    @exit_on_failure
    def handler(**_: Any) -> None:
        raise exc

    return handler


def test_a_failing_start_up_handler_ends_the_process_through_celerys_signal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Celery's Signal.send swallows Exception; SystemExit must come through it
    signal = Signal(name="test_startup")
    handler = _raises(ConfigError("setting a.b: bad\nsecond line"))
    signal.connect(handler, weak=False)
    with pytest.raises(SystemExit) as exited:
        signal.send(sender=None)
    assert exited.value.code == 2
    assert capsys.readouterr().err == "lewis: configuration error: setting a.b: bad second line\n"


def test_any_other_start_up_failure_exits_1() -> None:
    with pytest.raises(SystemExit) as exited:
        _raises(RuntimeError("no fork for you"))()
    assert exited.value.code == 1
