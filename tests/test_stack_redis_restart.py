"""`lewis up` keeps its Redis (issue 12, item 8): a redis-server killed with SIGKILL comes back
on the same port, with the same password and the data of its AOF, and the stack goes on."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from celery import Celery

from tests.support.procs import lewis_process, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

QUEUES = ("io", "cpu", "control")


def _info(home: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((home / "stack.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _redis_pid(supervisor: int) -> int | None:
    """The supervisor's redis-server child, if one runs."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(supervisor).children():
            with contextlib.suppress(psutil.Error):
                if child.name() == "redis-server" and child.status() != psutil.STATUS_ZOMBIE:
                    return int(child.pid)
    return None


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _send(
    app: Celery, count: int, label: str, task: str = "lewis.bench.noop", args: tuple[Any, ...] = ()
) -> list[str]:
    ids = []
    for i in range(count):
        queue = QUEUES[i % len(QUEUES)]
        task_id = f"{label}-{queue}-{uuid.uuid4().hex[:8]}"
        app.send_task(task, args=args, queue=queue, routing_key=queue, task_id=task_id)
        ids.append(task_id)
    return ids


def _succeeded(app: Celery, task_ids: list[str]) -> bool:
    return all(app.backend.get_task_meta(t)["status"] == "SUCCESS" for t in task_ids)


def test_up_restarts_a_killed_redis_on_its_port_password_and_data(tmp_path: Path) -> None:
    home = tmp_path / "stack"
    env = {
        "LEWIS_STACK_HOME": str(home),
        "LEWIS_MONITORING_HEALTH_CHECK_INTERVAL": "2",
        "LEWIS_MONITORING_PING_TIMEOUT": "0.5",
        "LEWIS_WORKERS_SHUTDOWN_TIMEOUT": "2",
        "LEWIS_STACK_BEAT_LOCK_TIMEOUT": "3",
        # a task cut off by the crash comes back after the visibility timeout: keep it short
        "LEWIS_BROKER_VISIBILITY_TIMEOUT": "30",
        "LEWIS_TASKS_TIME_LIMIT": "20",
        "LEWIS_TASKS_SOFT_TIME_LIMIT": "15",
    }
    with lewis_process(["up", "--timeout", "120"], env, tmp_path / "up.log") as up:
        try:
            wait_for(
                lambda: _info(home).get("ready") or up.poll() is not None,
                150,
                what="the stack to be ready",
            )
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            info = _info(home)
            url, old_pid = info["broker_url"], _redis_pid(up.pid)
            app = Celery("restart-test", broker=url, backend=url)
            # Given finished work, queued work and a key written before the crash
            client = redis.Redis.from_url(url)
            client.config_set("appendfsync", "always")  # each write on disk before its reply
            client.set("before-the-crash", "kept")
            done_before = _send(app, 6, "done")
            wait_for(lambda: _succeeded(app, done_before), 120, what="the first tasks")
            # and tasks running on every worker when Redis dies, more waiting behind them
            running = _send(app, 3, "running", "lewis.bench.io_sleep", (3,))
            wait_for(lambda: client.hlen("unacked") >= 3, 30, what="tasks to be running")
            queued = _send(app, 30, "queued", "lewis.bench.io_sleep", (0.1,))
            client.close()
            app.close()
            # When the embedded redis-server is killed with SIGKILL
            os.kill(old_pid, signal.SIGKILL)
            # Then the supervisor starts it again, on the same port with the same password
            wait_for(
                lambda: (
                    up.poll() is not None
                    or _answers(url)
                    and _redis_pid(up.pid) not in (None, old_pid)
                ),
                120,
                what="redis to come back",
            )
            assert up.poll() is None, "the stack stopped when its redis died"
            # the stack file names the new redis once the supervisor has recorded it
            wait_for(
                lambda: _info(home).get("processes", {}).get("redis") == _redis_pid(up.pid),
                30,
                what="stack.json to name the new redis",
            )
            info = _info(home)
            assert info["broker_url"] == url and info["processes"]["redis"] != old_pid
            with pytest.raises(redis.AuthenticationError):
                port = redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
                redis.Redis(host="127.0.0.1", port=port).ping()
            client = redis.Redis.from_url(url)
            assert client.get("before-the-crash") == b"kept"  # the AOF was loaded again
            client.close()
            # and workers of every queue consume again, beat leads again
            app = Celery("restart-test", broker=url, backend=url)
            after = _send(app, 6, "after")
            wait_for(lambda: _succeeded(app, after), 180, what="tasks sent after the restart")
            assert _succeeded(app, done_before)  # results from before the crash survived
            # nothing was lost: what ran or waited at the crash completes too
            wait_for(
                lambda: _succeeded(app, running + queued),
                180,
                what="tasks running or queued at the crash",
            )
            app.close()
            status = _status(env)
            assert status["beat"]["alive"], status
            assert up.poll() is None
        finally:
            if up.poll() is None:
                up.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    up.wait(90)
    log = (tmp_path / "up.log").read_text()
    assert "stack stopped" in log, log[-3000:]


def _status(env: dict[str, str]) -> dict[str, Any]:
    import sys

    from tests.support.procs import ROOT, lewis_env

    result: dict[str, Any] = {}

    def beat_alive() -> bool:
        nonlocal result
        done = subprocess.run(
            [sys.executable, "-m", "lewis_tasks.cli", "status", "--json"],
            cwd=ROOT,
            env=lewis_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        result = json.loads(done.stdout) if done.stdout.strip() else {}
        return bool(result.get("beat", {}).get("alive"))

    wait_for(beat_alive, 60, interval=1, what="beat to hold the lease again")
    return result
