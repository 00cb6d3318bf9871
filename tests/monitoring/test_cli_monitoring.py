"""`lewis metrics`, bad monitoring.* settings, and the monitor in `lewis up`/`status`/`down`."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from lewis_tasks.domain.metrics import MetricBatch, series_key, slot_of
from lewis_tasks.infra.metrics_store import MetricStore
from tests.conftest import with_db
from tests.support.procs import wait_for
from tests.test_cli import lewis


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "LEWIS_MONITORING_METRICS_INTERVAL",
            "0",
            "setting monitoring.metrics_interval: must be ≥ 1",
        ),
        ("LEWIS_MONITORING_RETENTION", "soon", "setting monitoring.retention: expected an integer"),
        (
            "LEWIS_MONITORING_REPORT_INTERVAL",
            "30",
            "setting monitoring.report_interval: must not exceed monitoring.metrics_interval",
        ),
        (
            "LEWIS_MONITORING_MONITOR_PORT",
            "70000",
            "setting monitoring.monitor_port: must be ≤ 65535",
        ),
        ("LEWIS_MONITORING_MAX_LABEL_SETS", "0", "setting monitoring.max_label_sets: must be ≥ 1"),
    ],
)
def test_a_bad_monitoring_value_is_one_line_naming_the_key_and_exit_2(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    result = lewis("metrics", env={name: value, "LEWIS_STACK_HOME": str(tmp_path)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_retention_must_hold_two_intervals(tmp_path: Path) -> None:
    result = lewis(
        "monitor",
        env={
            "LEWIS_MONITORING_RETENTION": "60",
            "LEWIS_MONITORING_METRICS_INTERVAL": "40",
            "LEWIS_MONITORING_REPORT_INTERVAL": "1",
            "LEWIS_STACK_HOME": str(tmp_path),
        },
    )
    assert result.returncode == 2 and "monitoring.retention: must hold two" in result.stderr


def test_lewis_metrics_lists_names_and_prints_stats(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    import time

    store = MetricStore(redis_client, 10, 3600, 100)
    batch = MetricBatch()
    now = time.time()
    for v in (0.1, 0.2, 0.3, 0.4):
        batch.observe(
            slot_of(now, 10),
            series_key("celery_task_runtime", {"name": "a"}),
            "celery_task_runtime",
            v,
        )
    batch.inc(
        slot_of(now, 10),
        series_key("celery_task_failed_total", {"name": "a"}),
        "celery_task_failed_total",
        2,
    )
    store.write(batch, now=now)
    env = {"LEWIS_BROKER_URL": with_db(redis_url, 0), "LEWIS_STACK_HOME": str(tmp_path)}
    listed = lewis("metrics", env=env)
    assert listed.returncode == 0
    assert "celery_task_runtime" in listed.stdout and "histogram" in listed.stdout
    stats = lewis("metrics", "celery_task_runtime", "--window", "5m", "--json", env=env)
    data = json.loads(stats.stdout)
    assert data["count"] == 4 and abs(data["max"] - 0.4) < 0.004 and abs(data["sum"] - 1.0) < 1e-3
    text = lewis("metrics", "celery_task_failed_total", "--window", "1m", env=env)
    assert "count 1, sum 2" in text.stdout
    unknown = lewis("metrics", "nope", env=env)
    assert unknown.returncode == 2 and "no metric named 'nope'" in unknown.stderr
    bad = lewis("metrics", "celery_task_runtime", "--window", "soon", env=env)
    assert bad.returncode == 2 and "window 'soon'" in bad.stderr


@pytest.mark.slow
def test_up_starts_the_monitor_status_shows_it_down_stops_it(tmp_path: Path) -> None:
    env = {
        "LEWIS_STACK_HOME": str(tmp_path / "stack"),
        "LEWIS_MONITORING_HEALTH_CHECK_INTERVAL": "2",
        "LEWIS_MONITORING_PING_TIMEOUT": "0.5",
        "LEWIS_WORKERS_SHUTDOWN_TIMEOUT": "2",
        "LEWIS_MONITORING_METRICS_INTERVAL": "1",
        "LEWIS_MONITORING_REPORT_INTERVAL": "0.5",
    }
    up = lewis("up", "--detach", "--timeout", "90", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    info: dict[str, Any] = json.loads((tmp_path / "stack" / "stack.json").read_text())
    try:
        url = info["monitor_url"]
        assert url.startswith("http://127.0.0.1:") and f"monitor {url}" in up.stdout
        port = int(url.rsplit(":", 1)[1])
        body = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
        assert "lewis_metrics_stale 0.0" in body

        def collected() -> bool:
            report = json.loads(lewis("status", "--json", env=env).stdout)
            return bool(report.get("metrics", {}).get("rates"))

        wait_for(collected, 60, interval=1, what="a collected snapshot in `lewis status`")
        report = json.loads(lewis("status", "--json", env=env).stdout)
        assert report["monitor"] == url
        assert set(report["metrics"]["rates"]) == {"io", "cpu", "control"}
        text = lewis("status", env=env).stdout
        assert f"monitor  {url}" in text and "done/s" in text
        wait_for(
            lambda: (
                "celery_worker_up"
                in urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
            ),
            30,
            what="worker up gauges",
        )
    finally:
        down = lewis("down", env=env)
    assert down.returncode == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
