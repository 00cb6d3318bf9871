"""The fleet with real worker and beat subprocesses: `lewis health` answers, `lewis drain`
lets the running task finish and leaves the queue to others."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lewis_tasks.infra.broker import queue_depths
from tests.conftest import stack_env
from tests.support.procs import ROOT, lewis_env, lewis_process, wait_for

pytestmark = pytest.mark.slow

HOST = socket.gethostname()
TASKS = "tests.support.fleettasks"


def lewis(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "lewis_tasks.cli", *args],
        cwd=ROOT,
        env=lewis_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


def io_worker(name: str, env: dict[str, str], home: Path, *extra: str) -> Any:
    return lewis_process(
        ["worker", "io", "-I", TASKS, "-n", f"{name}@%h", *extra], env, home / f"{name}.log"
    )


@pytest.fixture
def fleet_redis(worker_redis: Any) -> Any:
    """The worker db without presence records or queued messages of earlier tests."""

    def wipe() -> None:
        for key in worker_redis.scan_iter("lewis:fleet:*"):
            worker_redis.delete(key)
        worker_redis.delete("io", "lewis:beat:leader")

    wipe()
    yield worker_redis
    wipe()


def test_health_exit_codes_follow_workers_queues_and_beat(
    redis_url: str, tmp_path: Path, lewis_settings: Any, fleet_redis: Any
) -> None:
    env = stack_env(redis_url, tmp_path)
    # Given no worker at all: down
    code, out = lewis(env, "health")
    assert code == 2 and "no worker" in out, out
    # and a broker that does not answer: down, at once
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = stack_env(f"redis://127.0.0.1:{closed.getsockname()[1]}/0", tmp_path)
    code, out = lewis(dead, "health", "--queue", "io")
    closed.close()
    assert code == 2 and "does not answer" in out, out
    with io_worker("hio", env, tmp_path, "-c", "2"):
        # When an io worker is up
        wait_for(
            lambda: lewis(env, "health", "--worker", f"hio@{HOST}")[0] == 0,
            60,
            what="the io worker's presence",
        )
        # Then io is healthy, the worker and its host answer, cpu has nobody
        assert lewis(env, "health", "--queue", "io")[0] == 0
        assert lewis(env, "health", "--worker", HOST)[0] == 0
        assert lewis(env, "health", "--worker", f"nobody@{HOST}")[0] == 2
        assert lewis(env, "health", "--queue", "cpu")[0] == 2
        code, out = lewis(env, "health")
        assert code == 1 and "queue cpu: no worker" in out and "beat: NOT RUNNING" in out, out
        assert lewis(env, "health", "--beat")[0] == 2
        with lewis_process(["beat"], env, tmp_path / "beat.log"):
            wait_for(lambda: lewis(env, "health", "--beat")[0] == 0, 60, what="a beat leading")


def test_drain_finishes_the_running_task_exits_warm_and_leaves_the_queue(
    redis_url: str, tmp_path: Path, lewis_settings: Any, fleet_redis: Any, celery_app: Any
) -> None:
    env = stack_env(redis_url, tmp_path)
    job = "drain"
    fleet_redis.delete(f"test:who:{job}", f"test:started:{job}")
    with io_worker("drainme", env, tmp_path, "-c", "1") as proc:
        name = f"drainme@{HOST}"
        wait_for(lambda: lewis(env, "health", "--worker", name)[0] == 0, 60, what="the worker")
        # Given a worker running a 4-second task, with three more queued behind it
        for index in range(4):
            celery_app.send_task("lewis.testing.who", args=[job, index, 4.0], queue="io")
        wait_for(lambda: fleet_redis.llen(f"test:started:{job}") >= 1, 30, what="the first task")
        # When it is drained (and the drain waits for it to exit)
        code, out = lewis(env, "drain", "--worker", name, "--timeout", "60")
        assert code == 0, out
        assert "exits when idle" in out and "drained: 1 worker(s) exited" in out, out
        # Then the worker exited warm, with code 0
        assert proc.wait(30) == 0
    # the running task finished (not killed, not requeued), nothing else started
    assert fleet_redis.lrange(f"test:who:{job}", 0, -1) == [f"{name} 0".encode()]
    assert fleet_redis.llen(f"test:started:{job}") == 1
    # and the three others are still queued, for the workers that remain
    depth = queue_depths(fleet_redis, ["io"])["io"]
    assert (depth.ready, depth.unacked) == (3, 0)
    log = (tmp_path / "drainme.log").read_text()
    assert "drained: every accepted task finished" in log


def test_a_worker_whose_visibility_timeout_differs_from_the_cluster_refuses_to_start(
    redis_url: str, tmp_path: Path, lewis_settings: Any, fleet_redis: Any
) -> None:
    from lewis_tasks.domain.fleet import WorkerRecord
    from lewis_tasks.infra.fleet import write_worker

    env = stack_env(redis_url, tmp_path)  # visibility timeout 60 s
    # a record left by a worker killed a moment ago, with another value: it keeps nobody out
    write_worker(fleet_redis, WorkerRecord("ghost@gone", ("io",), visibility_timeout=10), 5.0)
    with io_worker("agreed", env, tmp_path, "-c", "1"):
        wait_for(
            lambda: lewis(env, "health", "--worker", f"agreed@{HOST}")[0] == 0,
            60,
            what="the first worker",
        )
        # When a second host's worker starts with another visibility timeout
        other = stack_env(redis_url, tmp_path, LEWIS_BROKER_VISIBILITY_TIMEOUT="61")
        code, out = lewis(other, "worker", "io", "-n", "odd@%h", timeout=90)
        # Then it exits 2 with one line naming the setting and both values
        assert code == 2, out[-2000:]
        ours = [line for line in out.splitlines() if line.startswith("lewis:")]
        assert len(ours) == 1, out[-2000:]
        assert "broker.visibility_timeout (61s)" in ours[0] and "(60s on agreed@" in ours[0]
        assert "Traceback" not in out
        # and the same setting starts
        with io_worker("same", env, tmp_path, "-c", "1"):
            wait_for(
                lambda: lewis(env, "health", "--worker", f"same@{HOST}")[0] == 0,
                60,
                what="a worker that agrees",
            )


def test_a_process_on_another_database_than_the_cluster_refuses_before_it_works(
    redis_url: str, tmp_path: Path, lewis_settings: Any, fleet_redis: Any
) -> None:
    from lewis_tasks.cli.db import upgrade_database

    env = stack_env(redis_url, tmp_path)  # the cluster's database: tmp_path/lewis.db
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    for url in (env["LEWIS_DATABASE_URL"], elsewhere):
        upgrade_database(url)
    with io_worker("keeper", env, tmp_path, "-c", "1"):
        wait_for(
            lambda: lewis(env, "health", "--worker", f"keeper@{HOST}")[0] == 0,
            60,
            what="the first worker",
        )
        other = {**env, "LEWIS_DATABASE_URL": elsewhere}
        # When a worker starts with another database than the live one writes to
        code, out = lewis(other, "worker", "io", "-n", "stray@%h", timeout=90)
        # Then it exits 2 with one line naming the setting and the worker it disagrees with
        assert code == 2, out[-2000:]
        ours = [line for line in out.splitlines() if line.startswith("lewis:")]
        assert len(ours) == 1 and "database.url" in ours[0] and "keeper@" in ours[0], out[-2000:]
        # and a scan sent from a process on that other database is refused, nothing queued
        code, out = lewis(other, "scan", "127.0.0.1", "-p", "80", timeout=60)
        assert code == 2 and "database.url" in out and "nothing was submitted" in out, out
        assert "Traceback" not in out
        # while the same command on the cluster's database runs: the first chunk keeper ran
        assert "lewis.scan.chunk[" not in (tmp_path / "keeper.log").read_text()
        code, out = lewis(env, "scan", "127.0.0.1", "-p", "80", "--json", timeout=60)
        assert code == 0, out
        assert "lewis.scan.chunk[" in (tmp_path / "keeper.log").read_text()


def test_flower_on_a_public_address_without_auth_refuses_to_start(
    tmp_path: Path, redis_url: str
) -> None:
    env = stack_env(redis_url, tmp_path)
    code, out = lewis(env, "flower", "--address", "0.0.0.0", "--port", "1")
    assert code == 2 and "without auth" in out and "--unsafe-no-auth" in out, out
    code, out = lewis(env, "flower", "--address", "::", "--port", "1")
    assert code == 2 and "without auth" in out, out


def test_scan_without_an_io_worker_says_so_at_once_and_waits_only_if_asked(
    redis_url: str, tmp_path: Path, lewis_settings: Any, fleet_redis: Any
) -> None:
    env = stack_env(redis_url, tmp_path)
    assert lewis(env, "db", "upgrade")[0] == 0
    # Given only a cpu worker online
    with lewis_process(["worker", "cpu", "-c", "1", "-n", "onlycpu@%h"], env, tmp_path / "cpu.log"):
        wait_for(lambda: lewis(env, "health", "--queue", "cpu")[0] == 0, 60, what="the cpu worker")
        # When a scan is asked for: it is refused at once, nothing enqueued
        code, out = lewis(env, "scan", "127.0.0.1", "-p", "80", "--no-wait")
        assert code == 3 and "no io worker is online" in out, out
        assert fleet_redis.llen("io") == 0
        # and with --wait-for-workers it is submitted and waits in the queue
        code, out = lewis(env, "scan", "127.0.0.1", "-p", "80", "--no-wait", "--wait-for-workers")
        assert code == 0 and "no io worker is online" in out, out
        assert fleet_redis.llen("io") == 1


def test_status_lists_standby_beats_says_leader_changing_and_exits_1_when_incomplete(
    redis_url: str, tmp_path: Path, lewis_settings: Any, fleet_redis: Any
) -> None:
    import json
    import os
    import signal

    # a lease of 10 s (the shortest beat job interval), so a failover lasts long enough to see
    env = stack_env(
        redis_url,
        tmp_path,
        LEWIS_MONITORING_HEALTH_CHECK_INTERVAL="10",
        LEWIS_STACK_BEAT_LOCK_TIMEOUT="10",
    )
    with (
        io_worker("st", env, tmp_path, "-c", "1"),
        lewis_process(["beat"], env, tmp_path / "beat1.log") as first,
        lewis_process(["beat"], env, tmp_path / "beat2.log"),
    ):

        def report() -> tuple[int, dict[str, Any]]:
            code, out = lewis(env, "status", "--json", "--timeout", "0.5")
            return code, json.loads(out[out.index("{") :]) if "{" in out else {}

        wait_for(
            lambda: len(report()[1].get("standby_beats") or []) == 1,
            60,
            what="one leader and one standby",
        )
        code, rep = report()
        # Then a cluster with io only exits 1, naming what is missing, and lists the standby
        assert code == 1 and "queue cpu: no worker" in rep["problems"], rep
        assert rep["beat"]["alive"] and rep["beat"]["leader"] not in rep["standby_beats"]
        text = lewis(env, "status", "--timeout", "0.5")[1]
        assert "standby  " in text and "beat     alive, leader" in text, text
        # When the leader dies: "leader changing", not "NOT RUNNING", until the standby takes over
        dead = rep["beat"]["leader"]
        leader_pid = int(dead.split(":")[1])
        beat_pids = {first.pid} | {
            c.pid for c in __import__("psutil").Process(first.pid).children(recursive=True)
        }
        if leader_pid not in beat_pids:  # the second beat leads: kill that one
            os.kill(leader_pid, signal.SIGKILL)
        else:
            os.killpg(first.pid, signal.SIGKILL)
        wait_for(
            lambda: "leader changing" in lewis(env, "status", "--timeout", "0.2")[1],
            30,
            interval=0.1,
            what="'leader changing' during the failover",
        )
        wait_for(lambda: report()[1].get("beat", {}).get("alive"), 60, what="the standby leading")

        def taken_over() -> dict[str, Any] | None:
            rep = report()[1]
            new = rep.get("beat", {}).get("leader")
            return rep if rep.get("beat_leading") and new not in (None, dead) else None

        # and once the standby leads, the dead beat is no standby (before: it was listed as one
        # until its record expired, two leases after its death)
        wait_for(taken_over, 60, what="the standby holding the lease")
        rep = report()[1]
        assert rep["standby_beats"] == [] and rep["beat"]["leader"] != dead, rep


def test_status_text_shows_draining_workers() -> None:
    from lewis_tasks.cli.stack import format_status

    report = {
        "broker": {"url": "redis://h", "up": True, "ping_ms": 1.0},
        "queues": {"io": {"ready": 3, "unacked": 1, "workers": ["io-2@b"]}},
        "draining": ["io-1@a"],
        "beat": {"alive": False, "leader": None},
        "beat_state": "leader changing (standby h:2:x)",
        "standby_beats": ["h:2:x"],
        "heartbeat": None,
        "metrics": {},
    }
    text = format_status(report)
    assert "draining io-1@a" in text and "beat     leader changing (standby h:2:x)" in text
    assert "NOT RUNNING" not in text


def test_drain_of_one_queue_keeps_the_worker_on_the_others(
    redis_url: str, tmp_path: Path, lewis_settings: Any, fleet_redis: Any
) -> None:
    env = stack_env(redis_url, tmp_path)
    with io_worker("both", env, tmp_path, "-c", "1", "-Q", "io,cpu") as proc:
        name = f"both@{HOST}"
        wait_for(lambda: lewis(env, "health", "--queue", "cpu")[0] == 0, 60, what="the worker")
        # When only its cpu queue is drained
        code, out = lewis(env, "drain", "--queue", "cpu", "--worker", name)
        assert code == 0 and "still consuming io" in out, out
        # Then nobody takes cpu work any more, io still is, and the worker keeps running
        wait_for(lambda: lewis(env, "health", "--queue", "cpu")[0] == 2, 30, what="cpu dropped")
        assert lewis(env, "health", "--queue", "io")[0] == 0
        assert lewis(env, "health", "--worker", name)[0] == 0
        assert proc.poll() is None


def test_status_does_not_pass_off_an_old_heartbeat_as_current(tmp_path: Path) -> None:
    import json
    import time

    from lewis_tasks.cli.stack import _date_heartbeat, format_status
    from lewis_tasks.infra.config import load_settings

    base = {
        "broker": {"url": "redis://h", "up": True, "ping_ms": 1.0},
        "queues": {},
        "beat": {"alive": True, "leader": "b", "lease_left_s": 3.0},
        "metrics": {},
    }
    settings = load_settings(
        env={"LEWIS_STACK_HOME": str(tmp_path), "LEWIS_BROKER_URL": "redis://h:1/0"}, cwd=tmp_path
    )
    now = time.time()
    period = settings.monitoring.health_check_interval

    def started() -> float:  # what `lewis status` reads from the stack file
        return json.loads((tmp_path / "stack.json").read_text())["started_at"]

    # Given a stack started a minute ago, and the database's last heartbeat from an hour ago
    (tmp_path / "stack.json").write_text(json.dumps({"started_at": now - 60}))
    old = {"slot": 1, "recorded_at": now - 3600, "workers": 3, "rtt_ms_max": 1.0}
    _date_heartbeat(old, started(), period)
    # Then status says it was a previous stack's, not '3 workers answered'
    text = format_status({**base, "heartbeat": old})
    assert "none since this stack started" in text and "3 workers answered" not in text
    # A heartbeat of this stack that stopped two periods ago is marked stale
    (tmp_path / "stack.json").write_text(json.dumps({"started_at": now - 10 * period}))
    quiet = {"slot": 2, "recorded_at": now - 2.5 * period, "workers": 2, "rtt_ms_max": None}
    _date_heartbeat(quiet, started(), period)
    assert "heartbeat STALE: last " in format_status({**base, "heartbeat": quiet})
    # and a fresh one is shown as it is
    fresh = {"slot": 3, "recorded_at": now - 5, "workers": 2, "rtt_ms_max": None}
    _date_heartbeat(fresh, started(), period)
    assert "STALE" not in format_status({**base, "heartbeat": fresh})
