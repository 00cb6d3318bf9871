"""The celery actuator on real worker processes: consumers added and cancelled through remote
control, a prefork pool grown on the vertical advice."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from lewis_tasks.domain.scaling import ScalingDecision
from lewis_tasks.errors import ActuatorError
from lewis_tasks.infra.actuators import CeleryControl
from lewis_tasks.infra.broker import broadcast
from lewis_tasks.infra.fleet import read_workers
from tests.conftest import stack_env
from tests.support.procs import lewis_process, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
HOST = socket.gethostname()


def consuming(client: Any, queue: str) -> set[str]:
    return {w.name for w in read_workers(client) if queue in w.consuming}


def decision(desired: int, advice: list[dict[str, Any]] | None = None) -> ScalingDecision:
    return ScalingDecision(
        "io", "up", None, desired, desired, "test", {"pool_advice": advice or []}
    )


def test_consumers_follow_the_decision_and_the_pool_grows(
    redis_url: str, tmp_path: Path, lewis_settings: Any, worker_redis: Any, celery_app: Any
) -> None:
    env = stack_env(redis_url, tmp_path)
    for key in worker_redis.scan_iter("lewis:fleet:*"):
        worker_redis.delete(key)
    a, b = f"ca@{HOST}", f"cb@{HOST}"
    with (
        lewis_process(["worker", "io", "-n", "ca@%h", "-c", "1"], env, tmp_path / "a.log"),
        lewis_process(["worker", "cpu", "-n", "cb@%h", "-c", "1"], env, tmp_path / "b.log"),
    ):
        wait_for(
            lambda: {a, b} <= {w.name for w in read_workers(worker_redis)},
            90,
            what="both workers' presence",
        )
        actuator = CeleryControl(celery_app, worker_redis, timeout=3.0)
        # When io wants two consumers and only ca consumes it
        out = actuator.apply(decision(2))
        # Then cb is given io too
        assert out["added"] == [b]
        wait_for(lambda: consuming(worker_redis, "io") == {a, b}, 30, what="cb consuming io")
        # a third cannot be had: the actuator says so (recorded; the next decision retries)
        with pytest.raises(ActuatorError, match="1 more io consumer"):
            actuator.apply(decision(3))
        # When io wants one: the later name stops consuming io, and keeps its cpu queue
        out = actuator.apply(decision(1))
        assert out["cancelled"] == [b]
        wait_for(lambda: consuming(worker_redis, "io") == {a}, 30, what="cb off io")
        assert "cpu" in next(w for w in read_workers(worker_redis) if w.name == b).consuming
        # and the vertical advice grows cb's prefork pool by one process
        before = broadcast(celery_app, "stats", timeout=3.0, destination=[b])[b]
        out = actuator.apply(decision(1, [{"worker": b, "advice": "grow", "reason": "cpu 95%"}]))
        assert "ok" in out["pool"][b], out
        grown = len(before["pool"]["processes"]) + 1
        wait_for(
            lambda: (
                len(
                    broadcast(celery_app, "stats", timeout=3.0, destination=[b])[b]["pool"][
                        "processes"
                    ]
                )
                == grown
            ),
            30,
            what="a grown pool",
        )
