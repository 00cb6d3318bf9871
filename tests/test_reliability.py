"""At-least-once with nothing lost, proven with real worker subprocesses and kill -9."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.chaos.cluster import FAST_RECOVERY
from lewis_tasks.producer import submit
from tests.conftest import stack_env
from tests.support.procs import kill_group, lewis_process, wait_for, worker_names

pytestmark = pytest.mark.slow


def _worker(name: str, redis_url: str, home: Path, limits: dict[str, str] = FAST_RECOVERY) -> Any:
    env = stack_env(redis_url, home, **limits)
    return lewis_process(
        ["worker", "cpu", "-c", "1", "-I", "tests.support.killtasks", "-n", f"{name}@%h"],
        env,
        home / f"{name}.log",
    )


def test_kill_9_mid_task_redelivers_and_records_once(
    redis_url: str, tmp_path: Path, lewis_settings: Any, worker_redis: Any, celery_app: Any
) -> None:
    worker_redis.delete("test:records", "test:starts:k1", "test:completions:k1", "test:running:k1")
    # Given a cpu worker running a 3-second task
    with _worker("victim", redis_url, tmp_path) as victim:
        wait_for(
            lambda: any(n.startswith("victim@") for n in worker_names(celery_app)),
            30,
            what="the victim worker",
        )
        handle = submit("lewis.testing.record", args=["k1", 3.0])
        wait_for(lambda: worker_redis.exists("test:running:k1"), 20, what="the task to start")
        # When the whole worker is killed with SIGKILL in the middle of it
        kill_group(victim)
    assert not worker_redis.hexists("test:records", "k1")
    # Then a fresh worker gets the task back (after the visibility timeout) and finishes it
    with _worker("rescuer", redis_url, tmp_path):
        assert handle.wait(timeout=60) == "k1"
    assert int(worker_redis.get("test:starts:k1")) == 2
    assert int(worker_redis.get("test:completions:k1")) == 1
    assert worker_redis.hlen("test:records") == 1


# The task that always kills its worker (fails after the cap, never loops, its neighbours
# complete, the worker stays up) is the chaos suite's poison experiment: tests/test_chaos.py.
