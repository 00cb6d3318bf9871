"""The local actuator's supervisor side with real worker processes: a wanted count starts
named workers; a scale-down drains the newest while it runs a task — nothing killed or lost."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lewis_tasks.infra.actuators import LOCAL_KEY, read_local, write_desired
from lewis_tasks.infra.config import load_settings
from lewis_tasks.infra.supervisor import Stack
from tests.conftest import stack_env
from tests.support.procs import lewis_env, wait_for, worker_names

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
TASKS = "tests.support.fleettasks"


@pytest.fixture
def stack(
    redis_url: str, tmp_path: Path, lewis_settings: Any, worker_redis: Any
) -> Iterator[Stack]:
    env = stack_env(
        redis_url, tmp_path, LEWIS_WORKERS_IO_CONCURRENCY="1", LEWIS_WORKERS_SHUTDOWN_TIMEOUT="30"
    )
    (tmp_path / "logs").mkdir()
    s = Stack(
        load_settings(env=env, cwd=tmp_path),
        broker_url=env["LEWIS_BROKER_URL"],
        worker_extra=["-I", TASKS],
    )
    s._env = lewis_env(env)
    worker_redis.delete("io", LOCAL_KEY)
    s._start_pool()
    try:
        yield s
    finally:
        s.stop(on_step=lambda _: None)
        worker_redis.delete("io", LOCAL_KEY)


def test_scale_up_starts_named_workers_and_scale_down_drains_without_loss(
    stack: Stack, worker_redis: Any, celery_app: Any
) -> None:
    job = "scaledown"
    worker_redis.delete(f"test:who:{job}", f"test:started:{job}")
    # Given the supervisor's pool asked for two io workers
    write_desired(worker_redis, "io", 2)
    stack.pool.tend()
    io = [c for c in stack.children if c.profile == "io"]
    assert [c.name for c in io] == ["io", "io-2"]
    assert all(c.node and c.node.startswith(f"{c.name}@") for c in io)  # stable names
    report = read_local(worker_redis)
    assert report is not None and report["queues"]["io"]["running"] == ["io", "io-2"]
    wait_for(
        lambda: {c.node for c in io} <= worker_names(celery_app),
        90,
        what="both io workers answering",
    )
    # and four 3-second tasks, so each worker (concurrency 1) holds one while it runs
    for index in range(4):
        celery_app.send_task("lewis.testing.who", args=[job, index, 3.0], queue="io")
    wait_for(
        lambda: worker_redis.llen(f"test:started:{job}") >= 2,
        60,
        what="both workers running a task",
    )
    # When the wanted count drops to one
    write_desired(worker_redis, "io", 1)
    stack.pool.tend()
    newest = io[1]
    assert newest.retiring and read_local(worker_redis)["queues"]["io"]["draining"] == ["io-2"]
    # Then the newest drains: it finishes its task and exits warm (code 0), not restarted
    assert newest.process is not None and newest.process.wait(60) == 0
    stack._tend(newest)
    assert newest not in stack.children
    # and every task ran exactly once, the drained worker's included
    wait_for(lambda: worker_redis.llen(f"test:who:{job}") >= 4, 60, what="all four tasks")
    done = [x.decode().split() for x in worker_redis.lrange(f"test:who:{job}", 0, -1)]
    assert sorted(int(i) for _, i in done) == [0, 1, 2, 3]
    assert any(node == newest.node for node, _ in done), done
    assert worker_redis.llen(f"test:started:{job}") == 4
    log = Path(newest.log_path).read_text()
    assert "drained: every accepted task finished" in log
    assert socket.gethostname() in newest.node


def test_a_worker_that_will_not_start_is_reported_and_retried(
    redis_url: str, tmp_path: Path, lewis_settings: Any, worker_redis: Any
) -> None:
    env = stack_env(redis_url, tmp_path)
    (tmp_path / "logs").mkdir()
    # Given a supervisor whose interpreter is gone
    s = Stack(
        load_settings(env=env, cwd=tmp_path),
        broker_url=env["LEWIS_BROKER_URL"],
        python=str(tmp_path / "no-such-python"),
    )
    s._env = lewis_env(env)
    worker_redis.delete(LOCAL_KEY)
    s._start_pool()
    try:
        write_desired(worker_redis, "io", 2)
        # When it tends the pool
        s.pool.tend()
        # Then nothing runs and its report says why (the local actuator records it)
        report = read_local(worker_redis)
        assert report is not None and report["queues"]["io"]["running"] == []
        assert "a new io worker did not start" in report["queues"]["io"]["error"]
        assert "no-such-python" in report["queues"]["io"]["error"]
        # and the next tend tries again, the supervisor going on
        s.python = sys.executable
        s.pool.tend()
        assert read_local(worker_redis)["queues"]["io"]["error"] is None
        assert [c.name for c in s.children] == ["io", "io-2"]
    finally:
        s.stop(on_step=lambda _: None)
        worker_redis.delete(LOCAL_KEY)
