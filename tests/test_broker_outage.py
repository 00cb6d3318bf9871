"""Workers of every profile survive a Redis outage with tasks in flight (issue 12, item 7).

A real redis-server (AOF on) is killed with SIGKILL while every worker runs a task, kept
down, then restarted on the same port from the same data directory. Every worker must still
be running, finish its in-flight task with its result stored, and consume new tasks.

The outage lasts ``LEWIS_TEST_OUTAGE_S`` seconds (default 30, the issue's figure). Two
failures hide behind it. kombu's crash on a closed connection (transport.py) needs Redis
still down when the consumer's read fails and redis-py makes its one immediate reconnect
(``Retry(NoBackoff(), 1)``, from kombu's ``retry_on_timeout``): any real outage; 3 s crashed
the old io worker here. Celery's result store gives up after 20 retries one second apart
(its Redis backend's ``retry_policy``), so only an outage past ~20 s plus the task's remaining
run shows a task that ran but was recorded as failed. 30 s covers both; a shorter value
still exercises the first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from lewis_tasks.infra.redis_server import EmbeddedRedis
from tests.conftest import stack_env
from tests.support.procs import lewis_process, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

OUTAGE_S = float(os.environ.get("LEWIS_TEST_OUTAGE_S", "30"))
NAP_S = 6.0  # in-flight tasks finish while Redis is still down: their results wait for it
# The prefork (cpu) worker cancels its in-flight task when the connection drops
# (worker_cancel_long_running_tasks_on_connection_loss); the task comes back after the
# visibility timeout, so that is kept short.
LIMITS = {
    "LEWIS_BROKER_VISIBILITY_TIMEOUT": "45",
    "LEWIS_TASKS_TIME_LIMIT": "30",
    "LEWIS_TASKS_SOFT_TIME_LIMIT": "25",
}
PROFILES = {"io": ["-c", "2"], "cpu": ["-c", "2"], "control": ["-c", "2"]}


def _log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _send(app: Celery, queue: str, key: str, seconds: float) -> str:
    task_id = f"{key}-{uuid.uuid4().hex[:8]}"
    app.send_task(
        "lewis.testing.nap", args=[key, seconds], queue=queue, routing_key=queue, task_id=task_id
    )
    return task_id


def _result(app: Celery, task_id: str) -> Any:
    meta = app.backend.get_task_meta(task_id)
    return meta["status"], meta["result"]


def test_every_worker_survives_a_redis_outage_with_tasks_in_flight(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    with contextlib.closing(redis.Redis.from_url(server.url)) as admin:
        admin.config_set("appendfsync", "always")  # every delivery is on disk when Redis dies
    env = stack_env(server.url, tmp_path, **LIMITS)
    broker = env["LEWIS_BROKER_URL"]
    logs = {p: tmp_path / f"{p}.log" for p in PROFILES}
    try:
        with contextlib.ExitStack() as stack:
            workers = {
                p: stack.enter_context(
                    lewis_process(
                        ["worker", p, *opts, "-I", "tests.support.killtasks"], env, logs[p]
                    )
                )
                for p, opts in PROFILES.items()
            }

            def all_alive() -> None:
                for profile, worker in workers.items():
                    assert worker.poll() is None, (
                        f"the {profile} worker died:\n{_log_text(logs[profile])[-3000:]}"
                    )

            wait_for(
                lambda: all("ready." in _log_text(logs[p]) for p in PROFILES),
                120,
                what="io, cpu and control workers",
            )
            # Given a task in flight on every worker
            with _producer(broker) as producer:
                in_flight = {p: _send(producer, p, f"before-{p}", NAP_S) for p in PROFILES}
            client = redis.Redis.from_url(broker)
            wait_for(
                lambda: (
                    client.hlen("unacked") >= len(PROFILES)
                    and not any(client.llen(p) for p in PROFILES)
                ),
                30,
                what="every task to be delivered",
            )
            client.close()
            # When Redis is killed, stays down, and comes back on the same port and data
            os.kill(server.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
            server.process.wait()  # type: ignore[union-attr]
            time.sleep(OUTAGE_S)
            for profile in PROFILES:  # kombu's crash (transport.py) is logged at once
                assert "Unrecoverable error" not in _log_text(logs[profile]), (
                    f"the {profile} worker crashed:\n{_log_text(logs[profile])[-3000:]}"
                )
            all_alive()
            server.start()
            # Then every worker stays up, stores its in-flight task's result, and consumes
            # new work
            with _producer(broker) as producer:
                after = {p: _send(producer, p, f"after-{p}", 0) for p in PROFILES}
                for task_ids in (in_flight, after):
                    for profile, task_id in task_ids.items():
                        wait_for(
                            lambda t=task_id: _result(producer, t)[0] == "SUCCESS",
                            120,
                            interval=0.5,
                            what=f"task {task_id} on the {profile} worker",
                        )
                assert {_result(producer, t)[1] for t in in_flight.values()} == {
                    f"before-{p}" for p in PROFILES
                }
            all_alive()
            for profile in PROFILES:
                assert "Unrecoverable error" not in _log_text(logs[profile]), profile
    finally:
        server.stop()


@contextlib.contextmanager
def _producer(broker: str) -> Iterator[Celery]:
    app = Celery("outage-test", broker=broker, backend=broker)
    try:
        yield app
    finally:
        app.close()
