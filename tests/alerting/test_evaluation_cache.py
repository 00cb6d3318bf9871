"""The engine's caches (parsed slots, per-slot roll-ups, histogram blocks) change no value:
each tick over a growing store equals a fresh evaluation of the same data."""

from __future__ import annotations

import random

import redis

from lewis_tasks.domain.alerts import AGGREGATIONS, parse_rule
from lewis_tasks.domain.alertvalues import SparseHist
from lewis_tasks.domain.histogram import LatencyHistogram
from lewis_tasks.domain.metrics import MetricBatch, series_key
from lewis_tasks.infra.alerting import AlertEngine, SlotCache
from lewis_tasks.infra.metrics_store import MetricStore

STEP = 10


def rules() -> list:
    out = []
    for i, agg in enumerate(AGGREGATIONS):
        for metric, by in (
            ("celery_task_runtime", ["name"]),
            ("celery_queue_length", []),
            ("celery_task_failed_total", ["queue"]),
        ):
            for window in ("1m", "5m", "30m"):
                out.append(
                    parse_rule(
                        {
                            "name": f"R{len(out)}",
                            "metric": metric,
                            "aggregation": agg,
                            "window": window,
                            "threshold": i,
                            "by": by,
                        }
                    )
                )
    return out


def write_slot(store: MetricStore, slot: int, rnd: random.Random) -> None:
    b = MetricBatch()
    at = slot * STEP + 1
    for t in range(3):
        labels = {"name": f"t{t}", "queue": "io" if t else "cpu"}
        b.inc(
            slot,
            series_key("celery_task_failed_total", labels),
            "celery_task_failed_total",
            float(rnd.randint(0, 3)),
        )
        for _ in range(rnd.randint(0, 5)):
            b.observe(
                slot,
                series_key("celery_task_runtime", labels),
                "celery_task_runtime",
                rnd.expovariate(3.0),
            )
    b.gauge(
        series_key("celery_queue_length", {"queue_name": "io"}),
        "celery_queue_length",
        float(rnd.randint(0, 200)),
        at,
    )
    store.write(b, now=at)


def test_cached_ticks_equal_fresh_evaluations(redis_client: redis.Redis) -> None:
    rnd = random.Random(7)
    store = MetricStore(redis_client, STEP, 7200, 1000)
    rs = rules()
    cached = AlertEngine(store, rs, STEP, cache=SlotCache())
    start = 1000
    for slot in range(start - 200, start):
        write_slot(store, slot, rnd)
    for slot in range(start, start + 40):
        write_slot(store, slot, rnd)
        if slot % 7 == 0:  # a late write into the slot before: still read again
            late = MetricBatch()
            late.inc(
                slot - 1,
                series_key("celery_task_failed_total", {"name": "t1", "queue": "io"}),
                "celery_task_failed_total",
                5.0,
            )
            store.write(late, now=slot * STEP + 2)
        now = slot * STEP + 3
        fresh = AlertEngine(store, rs, STEP, cache=SlotCache()).evaluate(now)
        assert cached.evaluate(now) == fresh, slot


def test_sparse_histograms_answer_as_latency_histograms() -> None:
    rnd = random.Random(3)
    for _ in range(200):
        parts = []
        for _ in range(rnd.randint(1, 6)):
            h = LatencyHistogram()
            for _ in range(rnd.randint(0, 40)):
                h.record(int(rnd.lognormvariate(8, 2)))
            parts.append(h)
        whole = LatencyHistogram.merged(parts)
        sparse = SparseHist()
        for p in parts:
            sparse.merge(SparseHist.of(p))
        assert (sparse.count, sparse.total, sparse.min, sparse.max) == (
            whole.count,
            whole.total,
            whole.min,
            whole.max,
        )
        for q in (0, 1, 50, 95, 99, 100):
            assert sparse.percentile(q) == whole.percentile(q)
