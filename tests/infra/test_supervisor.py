"""The stack supervisor's restart policy: backoff while a process keeps dying, reset once it
ran healthy; the embedded redis-server restarted on its own port, password and data."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import redis

from lewis_tasks.infra.config import load_settings
from lewis_tasks.infra.redis_server import EmbeddedRedis
from lewis_tasks.infra.supervisor import Backoff, Child, Stack
from tests.support.procs import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _crash_after(backoff: Backoff, clock: Clock, uptime: float) -> float:
    """Start, run ``uptime`` seconds, die; the delay chosen; the clock then at the restart."""
    backoff.started()
    clock.now += uptime
    delay = backoff.died()
    clock.now += delay
    assert backoff.ready()
    return delay


def test_delay_doubles_while_a_process_keeps_dying_up_to_the_cap() -> None:
    clock = Clock()
    backoff = Backoff(cap=30, healthy_after=60, clock=clock)
    delays = [_crash_after(backoff, clock, uptime=5) for _ in range(8)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


def test_delay_starts_over_after_a_healthy_run() -> None:
    clock = Clock()
    backoff = Backoff(cap=30, healthy_after=60, clock=clock)
    for _ in range(6):
        _crash_after(backoff, clock, uptime=1)
    assert backoff.restarts == 6
    # a run just short of healthy does not reset
    assert _crash_after(backoff, clock, uptime=59) == 30
    # one that lasted the healthy period does
    assert _crash_after(backoff, clock, uptime=60) == 1
    assert _crash_after(backoff, clock, uptime=2) == 2


def test_a_death_is_counted_once_and_waits_its_delay() -> None:
    clock = Clock()
    backoff = Backoff(cap=30, healthy_after=60, clock=clock)
    for _ in range(3):
        _crash_after(backoff, clock, uptime=1)
    backoff.started()
    clock.now += 1
    assert backoff.died() == 8
    clock.now += 5
    assert not backoff.ready()
    assert backoff.died() == 3  # the same death, seen again: the time left, not a new doubling
    clock.now += 3
    assert backoff.ready() and backoff.restarts == 4


def test_supervisor_restarts_a_dead_child_after_its_backoff(tmp_path: Path) -> None:
    clock = Clock()
    stack = Stack(load_settings(env={"LEWIS_STACK_HOME": str(tmp_path)}))
    child = Child(
        "crasher",
        [sys.executable, "-c", "raise SystemExit(3)"],
        {},
        tmp_path / "crasher.log",
        backoff=Backoff(clock=clock),
    )
    stack.children.append(child)
    child.start()
    first = child.process
    assert first is not None and first.wait(30) == 3
    stack._tend(child)  # seen dead: a restart is scheduled, not done
    assert child.process is first and child.backoff.due == clock.now + 1
    stack._tend(child)
    assert child.process is first
    clock.now += 1
    stack._tend(child)  # the delay passed: restarted
    assert child.process is not first and child.restarts == 1
    assert child.process is not None and child.process.wait(30) == 3


@pytest.mark.slow
def test_supervisor_restarts_embedded_redis_on_its_port_password_and_data(tmp_path: Path) -> None:
    clock = Clock()
    stack = Stack(
        load_settings(env={"LEWIS_STACK_HOME": str(tmp_path)}), redis_backoff=Backoff(clock=clock)
    )
    stack.redis = EmbeddedRedis(tmp_path / "redis", password="s3cret").start()
    stack.redis_backoff.started()
    url, port = stack.redis.url, stack.redis.port
    try:
        client = redis.Redis.from_url(url)
        client.config_set("appendfsync", "always")  # the key is on disk before the kill
        client.set("kept", "yes")
        client.close()
        # When the redis-server is killed
        old = stack.redis.process
        assert old is not None
        old.kill()
        old.wait()
        stack._tend_redis()
        assert stack.redis.process is old  # waits its backoff
        clock.now += 1
        stack._tend_redis()
        # Then it is back on the same port, with the same password and the data it had
        assert stack.redis.process is not old and stack.redis.port == port
        client = redis.Redis.from_url(url)
        assert client.get("kept") == b"yes"
        client.close()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port).ping()
    finally:
        stack.redis.stop()


def test_a_worker_that_ignores_sigterm_dies_with_a_killed_supervisor(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess

    # Given a supervisor process whose child (a stand-in for a worker stuck in its warm
    # shutdown: it ignores SIGTERM) runs in its own session, as Child starts workers
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from pathlib import Path
from lewis_tasks.infra.supervisor import Child
argv = [sys.executable, "-c",
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "pathlib.Path({str(tmp_path / "ready")!r}).touch(); time.sleep(120)"]
child = Child("io", argv, None, Path({str(tmp_path / "io.log")!r}))
child.start()
print(child.pid, flush=True)
time.sleep(120)
"""
    supervisor = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(supervisor.stdout.readline())  # type: ignore[union-attr]
        wait_for(
            lambda: (tmp_path / "ready").exists(),
            30,
            interval=0.05,
            what="the worker ignoring SIGTERM",
        )
        # When the supervisor is SIGKILLed (no shutdown of its own)
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait()
        # Then the kernel kills the worker too: none is left behind, running for ever
        wait_for(lambda: _gone_or_zombie(worker), 10, interval=0.05, what="the worker to die")
    finally:
        supervisor.kill()
        supervisor.wait()
        supervisor.stdout.close()  # type: ignore[union-attr]
        with contextlib.suppress(ProcessLookupError, NameError):
            os.kill(worker, signal.SIGKILL)


def _gone_or_zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
