"""Scaling end to end on `lewis up` (issue 16): a burst of slow io tasks starts extra io worker
processes within two decision intervals, every task completes exactly once, and once the
stabilisation window has passed the pool drains back to one worker."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from lewis_tasks.domain.metrics import parse_series
from lewis_tasks.infra.actuators import read_local
from lewis_tasks.infra.metrics_store import MetricStore
from tests.support.procs import ROOT, lewis_env, lewis_process, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

INTERVAL = 2.0  # scaling.interval
WINDOW = 10.0  # scaling.stabilization_window
BURST = 40  # io_sleep tasks of SLEEP seconds; 2 per worker (io concurrency 2, target 2)
SLEEP = 2.0
ENV = {
    "LEWIS_MONITORING_HEALTH_CHECK_INTERVAL": "2",
    "LEWIS_MONITORING_PING_TIMEOUT": "0.5",
    "LEWIS_MONITORING_METRICS_INTERVAL": "1",
    "LEWIS_MONITORING_REPORT_INTERVAL": "0.5",
    "LEWIS_WORKERS_SHUTDOWN_TIMEOUT": "5",
    "LEWIS_STACK_BEAT_LOCK_TIMEOUT": "3",
    "LEWIS_BROKER_VISIBILITY_TIMEOUT": "40",
    "LEWIS_TASKS_TIME_LIMIT": "20",
    "LEWIS_TASKS_SOFT_TIME_LIMIT": "15",
    "LEWIS_WORKERS_IO_CONCURRENCY": "2",
    "LEWIS_SCALING_INTERVAL": str(INTERVAL),
    "LEWIS_SCALING_IO_MIN_WORKERS": "1",
    "LEWIS_SCALING_IO_MAX_WORKERS": "3",
    "LEWIS_SCALING_IO_TARGET_PER_WORKER": "2",
    "LEWIS_SCALING_STABILIZATION_WINDOW": str(WINDOW),
}  # actuator: auto -> local


def _info(home: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((home / "stack.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def io_processes(home: Path) -> list[str]:
    return sorted(n for n in _info(home).get("processes", {}) if n == "io" or n.startswith("io-"))


def decisions(home: Path) -> list[tuple[int, str, int | None, int | None, str | None]]:
    with contextlib.closing(sqlite3.connect(home / "lewis.db")) as db:
        return list(
            db.execute(
                "SELECT slot, action, current, desired, error FROM "
                "scaling_decisions WHERE queue = 'io' ORDER BY slot"
            )
        )


def task_totals(store: MetricStore, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for series, value in store.totals()[0].items():
        metric, labels = parse_series(series)
        if labels.get("name") == name:
            out[metric] = out.get(metric, 0.0) + value
    return out


def test_a_burst_scales_io_up_and_the_window_brings_it_back(tmp_path: Path) -> None:
    home = tmp_path / "stack"
    env = {"LEWIS_STACK_HOME": str(home), **ENV}
    with lewis_process(["up", "--timeout", "150"], env, tmp_path / "up.log") as up:
        try:
            wait_for(
                lambda: _info(home).get("ready") or up.poll() is not None,
                180,
                what="the stack to be ready",
            )
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            url = _info(home)["broker_url"]
            client = redis.Redis.from_url(url)
            # Given the decision job running, holding io at its one worker
            wait_for(
                lambda: any(d[1] == "none" and d[2] == 1 for d in decisions(home)),
                90,
                what="a steady io decision",
            )
            assert read_local(client) is not None  # auto found the supervisor
            app = Celery("scale-test", broker=url, backend=url)
            # When a burst of slow io tasks arrives
            sent_at = time.time()
            ids = [f"burst-{i}-{uuid.uuid4().hex[:6]}" for i in range(BURST)]
            for task_id in ids:
                app.send_task(
                    "lewis.bench.io_sleep",
                    args=(SLEEP,),
                    queue="io",
                    routing_key="io",
                    task_id=task_id,
                )
            # Then an io decision within two intervals wants more workers, and they start
            wait_for(lambda: len(io_processes(home)) > 1, 60, what="an extra io worker")
            started_at = time.time()
            first_up = next(d for d in decisions(home) if d[1] == "up")
            assert first_up[0] <= int(sent_at // INTERVAL) + 2, (first_up, sent_at)
            assert first_up[4] is None  # the local actuator took it
            wait_for(lambda: len(io_processes(home)) == 3, 60, what="three io workers")
            assert io_processes(home) == ["io", "io-2", "io-3"]

            # each one named and answering in `lewis status`, like the first
            def status_io() -> list[str]:
                done = subprocess.run(
                    [sys.executable, "-m", "lewis_tasks.cli", "status", "--json"],
                    cwd=ROOT,
                    env=lewis_env(env),
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                report = json.loads(done.stdout)
                assert report["scaling"]["io"]["running"][0] == "io"
                return list(report["queues"]["io"]["workers"])

            wait_for(
                lambda: sorted(n.split("@")[0] for n in status_io()) == ["io", "io-2", "io-3"],
                60,
                what="the added workers in lewis status",
            )
            # and every task completes, exactly once
            wait_for(
                lambda: all(app.backend.get_task_meta(t)["status"] == "SUCCESS" for t in ids),
                180,
                what="the burst to finish",
            )
            drained_at = time.time()
            # after the window the pool returns to one worker, drained (exit 0), not killed
            wait_for(
                lambda: io_processes(home) == ["io"], WINDOW + 90, what="the io pool back to one"
            )
            local = read_local(client)
            assert local and local["queues"]["io"]["running"] == ["io"]
            store = MetricStore(client, 1, 3600, 2000)
            wait_for(
                lambda: (
                    task_totals(store, "lewis.bench.io_sleep").get("celery_task_succeeded_total")
                    == BURST
                ),
                30,
                what="every success reported",
            )
            totals = task_totals(store, "lewis.bench.io_sleep")
            assert totals.get("celery_task_started_total") == BURST, totals
            assert totals.get("celery_task_failed_total", 0) == 0, totals
            assert [d for d in decisions(home) if d[4]] == []  # no actuator failure
            app.close()
            client.close()
            print(
                f"\nreaction {started_at - sent_at:.1f}s, burst drained "
                f"{drained_at - sent_at:.1f}s after it was sent"
            )
        finally:
            if up.poll() is None:
                up.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    up.wait(90)
    log = (tmp_path / "up.log").read_text()
    assert "io-2 drained and exited (code 0)" in log and "io-3 drained and exited (code 0)" in log
    assert "stack stopped" in log, log[-3000:]
