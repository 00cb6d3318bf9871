"""The collector: queue depth per queue, workers up/down from their reports, the beat job."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from lewis_tasks.domain.metrics import MetricBatch, series_key
from lewis_tasks.infra.broker import PRIORITY_SEP, WorkerPing
from lewis_tasks.infra.collector import collect
from lewis_tasks.infra.metrics_store import MetricStore
from tests.conftest import stack_env
from tests.support.procs import lewis_process, wait_for

T0 = 1_800_000_000.0


def report(store: MetricStore, hostname: str, now: float) -> None:
    batch = MetricBatch()
    batch.gauge(
        series_key("lewis_worker_last_report_timestamp", {"hostname": hostname}),
        "lewis_worker_last_report_timestamp",
        now,
        now,
    )
    batch.gauge(
        series_key("lewis_worker_rss_bytes", {"hostname": hostname}),
        "lewis_worker_rss_bytes",
        1e6,
        now,
    )
    store.write(batch, now=now)


def gauges(store: MetricStore, metric: str) -> dict[str, float]:
    from lewis_tasks.domain.metrics import parse_series

    out = {}
    for s, (v, _) in store.latest().items():
        name, labels = parse_series(s)
        if name == metric:
            out[next(iter(labels.values()))] = v
    return out


def test_a_worker_that_stops_reporting_is_down_within_two_intervals(
    redis_client: redis.Redis,
) -> None:
    store = MetricStore(redis_client, 10, 3600, 100)
    pings = [WorkerPing("a@h", 1.0, ("cpu",)), WorkerPing("b@h", 1.0, ("cpu", "io"))]
    # Given two workers reporting at T0, and only "a" reporting after that
    report(store, "a@h", T0)
    report(store, "b@h", T0)
    snap = collect(None, store, ping_timeout=0.1, now=T0 + 1, pinger=lambda: pings)  # type: ignore[arg-type]
    assert {h: w["up"] for h, w in snap["workers"].items()} == {"a@h": True, "b@h": True}
    for tick in range(1, 4):
        report(store, "a@h", T0 + tick * 10)
        # b still answers pings (a stuck reporter), but its reports stopped
        snap = collect(
            None,
            store,
            ping_timeout=0.1,
            now=T0 + tick * 10 + 1,  # type: ignore[arg-type]
            pinger=lambda: pings,
        )
        if tick >= 2:  # then: down at the second interval without a report, not later
            assert snap["workers"]["b@h"]["up"] is False
    assert snap["workers"]["a@h"]["up"] is True
    assert gauges(store, "celery_worker_up") == {"a@h": 1.0, "b@h": 0.0}
    assert gauges(store, "celery_active_worker_count")["io"] == 1.0
    assert gauges(store, "celery_active_worker_count")["cpu"] == 2.0


def test_queue_length_counts_every_priority_sub_list_and_unacked(redis_client: redis.Redis) -> None:
    store = MetricStore(redis_client, 10, 3600, 100)
    redis_client.lpush("cpu", *["m"] * 5)
    redis_client.lpush(f"cpu{PRIORITY_SEP}6", *["m"] * 3)
    unacked = json.dumps([{"properties": {"delivery_info": {"routing_key": "io"}}}, "", "io"])
    redis_client.hset("unacked", mapping={"t1": unacked, "t2": unacked})
    snap = collect(None, store, ping_timeout=0.1, now=T0, pinger=lambda: [])  # type: ignore[arg-type]
    assert gauges(store, "celery_queue_length") == {"io": 0.0, "cpu": 8.0, "control": 0.0}
    assert gauges(store, "lewis_queue_unacked")["io"] == 2.0
    assert snap["queues"]["io"]["total"] == 2


@pytest.mark.slow
def test_the_beat_collects_every_interval_and_sees_a_queue_fill(
    redis_url: str, tmp_path: Path, lewis_settings: Any, worker_redis: redis.Redis
) -> None:
    from lewis_tasks.producer.base import submit_many

    for key in worker_redis.scan_iter("lewis:metrics:*"):
        worker_redis.delete(key)
    worker_redis.delete("io")
    env = stack_env(
        redis_url,
        tmp_path,
        LEWIS_DATABASE_URL=lewis_settings.database.url,
        LEWIS_MONITORING_METRICS_INTERVAL="1",
        LEWIS_MONITORING_REPORT_INTERVAL="0.5",
    )
    store = MetricStore(worker_redis, 1, 3600, 1000)
    # Given a control worker and the beat, and no io worker at all
    with (
        lewis_process(["worker", "control", "-n", "col-control@%h"], env, tmp_path / "c.log"),
        lewis_process(["beat"], env, tmp_path / "beat.log"),
    ):
        wait_for(
            lambda: (
                (store.snapshot() or {})
                .get("workers", {})
                .get(
                    next(iter([h for h in (store.snapshot() or {}).get("workers", {})] or ["-"])),
                    {},
                )
                .get("up")
                is True
            ),
            60,
            what="a first snapshot with the control worker up",
        )
        # When 1,000 tasks are pushed to the io queue
        submit_many("lewis.bench.io_noop", [((), {})] * 1000, pack=1)
        pushed = time.time()
        # Then a later snapshot shows them all waiting
        wait_for(
            lambda: (store.snapshot() or {}).get("queues", {}).get("io", {}).get("ready") == 1000,
            30,
            what="io depth 1000 in the snapshot",
        )
        snap = store.snapshot() or {}
        assert snap["ts"] >= pushed - 1
        assert snap["queues"]["io"]["workers"] == []
        assert any(h.startswith("col-control@") and w["up"] for h, w in snap["workers"].items())
    worker_redis.delete("io")


def test_the_collector_skips_a_tick_with_one_log_line_when_redis_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lewis_tasks.infra import config
    from lewis_tasks.infra.redis_client import reset_clients
    from lewis_tasks.infra.redis_server import free_port
    from lewis_tasks.tasks.control import collect_metrics

    previous = config.get_settings()
    config.set_settings(
        config.load_settings(
            env={
                "LEWIS_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
                "LEWIS_BROKER_CONNECT_TIMEOUT": "0.2",
                "LEWIS_STACK_HOME": str(tmp_path),
            }
        )
    )
    reset_clients()
    try:
        with caplog.at_level("WARNING", logger="lewis_tasks.tasks.control"):
            result = collect_metrics.run(slot=7)
    finally:
        config.set_settings(previous)
        reset_clients()
    assert result == {"slot": 7, "skipped": True}
    lines = [r for r in caplog.records if r.name == "lewis_tasks.tasks.control"]
    assert len(lines) == 1 and "collection of slot 7 skipped" in lines[0].getMessage()
