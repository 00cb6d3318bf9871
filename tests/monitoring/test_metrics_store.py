"""The metric store on a real Redis: stats from any client, exact merges, caps, flat keys."""

from __future__ import annotations

import redis

from lewis_tasks.domain.histogram import LatencyHistogram
from lewis_tasks.domain.metrics import MetricBatch, series_key, slot_of
from lewis_tasks.infra.metrics_store import MetricStore

T0 = 1_700_000_000.0


def store(client: redis.Redis, **kw: float) -> MetricStore:
    return MetricStore(
        client, kw.get("interval", 10), kw.get("retention", 3600), int(kw.get("cap", 50))
    )


def test_stats_come_from_redis_for_any_client(redis_client: redis.Redis, redis_url: str) -> None:
    # Given two "processes" writing runtimes of one task into the same slot range
    writer_a, writer_b = store(redis_client), store(redis.Redis.from_url(redis_url))
    exact = LatencyHistogram()
    for writer, values in ((writer_a, [0.010, 0.020, 0.030]), (writer_b, [0.040, 1.5])):
        batch = MetricBatch()
        for i, v in enumerate(values):
            slot = slot_of(T0 + i * 10, 10)
            batch.observe(
                slot, series_key("celery_task_runtime", {"name": "t"}), "celery_task_runtime", v
            )
            exact.record_seconds(v)
        writer.write(batch, now=T0)
    # When a third client asks for the last five minutes
    reader = store(redis.Redis.from_url(redis_url))
    stats = reader.stats("celery_task_runtime", "5m", now=T0 + 30)
    # Then the answer is the exact merge of every part
    assert stats.count == 5
    assert abs(stats.sum - exact.total / 1e6) < 1e-9
    assert abs(stats.min - 0.010) < 1e-9 and abs(stats.max - 1.5) < 1e-9
    assert stats.p50 == exact.percentile(50) / 1e6 and stats.p99 == exact.percentile(99) / 1e6


def test_counter_stats_are_per_slot_increases_and_totals_are_monotonic(
    redis_client: redis.Redis,
) -> None:
    s = store(redis_client)
    series = series_key("celery_task_succeeded_total", {"name": "t", "hostname": "w"})
    for i in range(6):
        batch = MetricBatch()
        batch.inc(slot_of(T0 + i * 10, 10), series, "celery_task_succeeded_total", i + 1)
        s.write(batch, now=T0 + i * 10)
    stats = s.stats("celery_task_succeeded_total", "30s", now=T0 + 50)
    assert (stats.count, stats.sum, stats.min, stats.max) == (3, 4 + 5 + 6, 4, 6)
    counters, _ = s.totals()
    assert counters[series] == 21


def test_label_sets_past_the_cap_fold_into_one_overflow_series(redis_client: redis.Redis) -> None:
    s = store(redis_client, cap=5)
    batch = MetricBatch()
    for i in range(20):
        batch.inc(1, series_key("m_total", {"id": str(i)}), "m_total")
    s.write(batch, now=T0)
    counters, _ = s.totals()
    assert len(counters) == 6  # five admitted plus the overflow series
    assert counters[series_key("m_total", {"overflow": "true"})] == 15
    assert sum(counters.values()) == 20
    # a second process sees the same cap
    other = store(redis_client, cap=5)
    batch = MetricBatch()
    batch.inc(1, series_key("m_total", {"id": "new"}), "m_total")
    other.write(batch, now=T0)
    assert len(other.totals()[0]) == 6


def test_key_count_stays_flat_over_many_intervals(redis_client: redis.Redis) -> None:
    # Given a one-minute retention and points written every 10 s interval for ~3 hours
    s = store(redis_client, retention=60)
    counts = []
    for i in range(1000):
        now = T0 + i * 10
        batch = MetricBatch()
        slot = slot_of(now, 10)
        batch.inc(
            slot,
            series_key("celery_task_received_total", {"name": f"t{i % 3}"}),
            "celery_task_received_total",
        )
        batch.observe(
            slot,
            series_key("celery_task_runtime", {"name": "t"}),
            "celery_task_runtime",
            0.001 * (i % 50),
        )
        batch.gauge(
            series_key("lewis_worker_rss_bytes", {"hostname": f"w{i % 4}"}),
            "lewis_worker_rss_bytes",
            i,
            now,
        )
        s.write(batch, now=now)
        s.prune(now)
        counts.append(s.key_count())
    # Then the number of keys stops growing once the retention is full
    assert max(counts[100:]) == min(counts[100:]), (min(counts[100:]), max(counts[100:]))
    assert max(counts) <= 60 / 10 + 2 + 7
    assert redis_client.zcard("lewis:metrics:slots") <= 60 / 10 + 1


def test_get_metric_stats_reads_the_process_settings_store(
    lewis_settings: object, worker_redis: redis.Redis
) -> None:
    import time

    from lewis_tasks.infra.metrics_store import get_metric_stats, store_from_settings

    store = store_from_settings()
    for key in worker_redis.scan_iter("lewis:metrics:*"):
        worker_redis.delete(key)
    batch = MetricBatch()
    now = time.time()
    for v in (0.5, 1.5):
        batch.observe(
            slot_of(now, store.interval),
            series_key("celery_task_queue_wait_time", {"name": "x"}),
            "celery_task_queue_wait_time",
            v,
        )
    store.write(batch, now=now)
    stats = get_metric_stats("celery_task_queue_wait_time", "5m")
    assert (stats.count, stats.min, stats.max, stats.avg) == (2, 0.5, 1.5, 1.0)
    assert stats.to_dict()["p99"] == 1.5
