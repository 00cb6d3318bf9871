"""The engine on a real Redis: slots committed once, state surviving a restart, the outbox."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import redis

from lewis_tasks.cli.db import upgrade_database as upgrade
from lewis_tasks.domain.alerts import parse_rule
from lewis_tasks.domain.metrics import MetricBatch, series_key
from lewis_tasks.infra.alerting import AlertEngine, drain_outbox
from lewis_tasks.infra.config import DatabaseSettings
from lewis_tasks.infra.database import make_engine
from lewis_tasks.infra.metrics_store import MetricStore
from lewis_tasks.storage.alerts import alert_history, record_transitions
from lewis_tasks.storage.db import session_scope

STEP = 10
BACKLOG = parse_rule(
    {
        "name": "Backlog",
        "metric": "celery_queue_length",
        "aggregation": "last",
        "window": "30s",
        "threshold": 100,
        "for": "20s",
        "by": ["queue_name"],
        "annotations": {"summary": "queue {queue_name}: {value}"},
    }
)


def store_of(client: redis.Redis) -> MetricStore:
    return MetricStore(client, interval=STEP, retention=3600, max_label_sets=100)


def put_depth(store: MetricStore, depth: float, at: float, queue: str = "io") -> None:
    batch = MetricBatch()
    batch.gauge(
        series_key("celery_queue_length", {"queue_name": queue}), "celery_queue_length", depth, at
    )
    store.write(batch, now=at)


def engine(client: redis.Redis) -> AlertEngine:
    return AlertEngine(store_of(client), [BACKLOG], interval=STEP)


def states(tick) -> dict[str, str]:  # noqa: ANN001
    return {a.rule + str(a.labels): a.state for a in tick.alerts.values()}


def test_pending_then_firing_then_resolved_from_the_store(redis_client: redis.Redis) -> None:
    e, store = engine(redis_client), store_of(redis_client)
    seen = []
    for slot, depth in zip(range(100, 106), (500, 500, 500, 500, 20, 20), strict=True):
        put_depth(store, depth, slot * STEP + 1)
        seen.append(states(e.tick(slot, now=slot * STEP + 2)))
    key = "Backlog{'queue_name': 'io'}"
    assert [s.get(key, "inactive") for s in seen] == [
        "pending",
        "pending",
        "firing",
        "firing",
        "resolved",
        "resolved",
    ]


def test_a_slot_is_committed_once_by_two_beats(redis_client: redis.Redis) -> None:
    # Given two engines (two beats' workers) evaluating the same slot at the same moment
    put_depth(store_of(redis_client), 500, 100 * STEP + 1)
    engines = [engine(redis.Redis(connection_pool=redis_client.connection_pool)) for _ in range(2)]
    barrier = threading.Barrier(2)
    ticks = []

    def run(e: AlertEngine) -> None:
        barrier.wait()
        ticks.append(e.tick(100, now=100 * STEP + 2))

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # Then exactly one commits, and the transition is in the outbox once
    assert sorted(t.committed for t in ticks) == [False, True]
    assert redis_client.llen("lewis:alerts:outbox") == 1
    # and evaluating it again later changes nothing
    again = engine(redis_client).tick(100, now=100 * STEP + 5)
    assert not again.committed and redis_client.llen("lewis:alerts:outbox") == 1


def test_a_stale_read_cannot_overwrite_a_newer_commit(redis_client: redis.Redis) -> None:
    put_depth(store_of(redis_client), 500, 100 * STEP + 1)
    e = engine(redis_client)
    slow_last, _ = e.load()  # a slow evaluation read "nothing committed" …
    assert engine(redis_client).tick(100, now=1002).committed  # … another committed meanwhile
    ok = e._commit(keys=list(e.keys), args=["" if slow_last is None else slow_last, 101, "{}"])
    assert ok == 0 and e.load()[0] == 100 and e.load()[1]


def test_a_new_process_in_the_middle_of_for_fires_on_time(redis_client: redis.Redis) -> None:
    store = store_of(redis_client)
    for slot in (100, 101):
        put_depth(store, 500, slot * STEP + 1)
        engine(redis_client).tick(slot, now=slot * STEP + 2)
    # a new process (new engine, new client) takes over at slot 102: 20 s after active_at
    put_depth(store, 500, 102 * STEP + 1)
    fresh = AlertEngine(
        store_of(redis.Redis(connection_pool=redis_client.connection_pool)),
        [BACKLOG],
        interval=STEP,
    )
    tick = fresh.tick(102, now=102 * STEP + 2)
    assert [(t.from_state, t.to_state) for t in tick.transitions] == [("pending", "firing")]


def test_outbox_drained_to_history_once_even_when_drained_twice(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    upgrade(url)
    db = make_engine(DatabaseSettings(url=url))
    store, e = store_of(redis_client), engine(redis_client)
    for slot, depth in zip(range(100, 106), (500, 500, 500, 20, 20, 20), strict=True):
        put_depth(store, depth, slot * STEP + 1)
        e.tick(slot, now=slot * STEP + 2)

    def write(items: list[dict]) -> int:
        with session_scope(db) as s:
            return record_transitions(s, items)

    items = [json.loads(i) for i in redis_client.lrange("lewis:alerts:outbox", 0, -1)]
    assert write(items[:1]) == 1  # a drainer that died after writing, before trimming
    assert drain_outbox(redis_client, write) == len(items) - 1
    assert redis_client.llen("lewis:alerts:outbox") == 0
    with session_scope(db) as s:
        rows = alert_history(s, dt.datetime.fromtimestamp(0, dt.UTC))
        moves = [(r.from_state, r.to_state) for r in rows]
    assert moves == [("inactive", "pending"), ("pending", "firing"), ("firing", "resolved")]
    db.dispose()


def test_missing_metric_is_visible_as_nodata(redis_client: redis.Redis) -> None:
    tick = engine(redis_client).tick(100, now=1002)  # nothing ever reported
    assert [(a.rule, a.state) for a in tick.alerts.values()] == [("Backlog", "nodata")]
    assert tick.transitions[0].summary == "Backlog: no data for celery_queue_length"
