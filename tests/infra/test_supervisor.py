"""The stack supervisor's restart policy: backoff while a process keeps dying, reset once it
ran healthy; the embedded redis-server restarted on its own port, password and data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import redis

from lewis_tasks.infra.config import load_settings
from lewis_tasks.infra.redis_server import EmbeddedRedis
from lewis_tasks.infra.supervisor import Backoff, Child, Stack


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
    child = Child("crasher", [sys.executable, "-c", "raise SystemExit(3)"], {},
                  tmp_path / "crasher.log", backoff=Backoff(clock=clock))
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
    stack = Stack(load_settings(env={"LEWIS_STACK_HOME": str(tmp_path)}),
                  redis_backoff=Backoff(clock=clock))
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
