"""The platform end to end inside one process: our app, a real embedded worker, real Redis."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from lewis_tasks.infra.broker import queue_depths
from lewis_tasks.producer import submit, submit_many
from tests.support.wait import wait_for


def test_heartbeat_records_every_live_worker_once_per_slot(
    celery_worker: Any, lewis_settings: Any
) -> None:
    from sqlalchemy import select

    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.storage.db import session_scope
    from lewis_tasks.storage.models import HeartbeatRow

    # Given a running worker, when the heartbeat for one slot runs twice (a failover re-fire)
    first = submit("lewis.control.heartbeat", kwargs={"slot": 424242}).wait(timeout=20)
    second = submit("lewis.control.heartbeat", kwargs={"slot": 424242}).wait(timeout=20)
    # Then the worker answered through the broker, and the slot was recorded only once
    names = [w["worker"] for w in first["workers"]]
    assert celery_worker.hostname in names
    assert first["new"] >= 1 and second["new"] == 0
    # (this slot's rows themselves: the newest row of this process's worker name may be a
    # real, later slot that an earlier test module of the same process recorded)
    with session_scope(get_engine()) as session:
        rows = list(session.scalars(select(HeartbeatRow).where(HeartbeatRow.slot == 424242)))
    assert {r.worker for r in rows} == set(names)
    assert all(r.rtt_ms is not None and r.rtt_ms > 0 for r in rows)


def test_submit_many_messages_are_consumed_by_a_real_worker(celery_worker: Any) -> None:
    # Given 200 heartbeats enqueued through one pipelined batch submit
    handles = submit_many(
        "lewis.control.heartbeat", (((), {"slot": 900000 + i}) for i in range(20)), batch=7
    )
    # Then every one runs and returns its own slot
    results = [h.wait(timeout=30) for h in handles]
    assert [r["slot"] for r in results] == [900000 + i for i in range(20)]


def test_bad_input_fails_readably_and_the_worker_lives(
    celery_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from lewis_tasks.errors import InvalidInput

    caplog.set_level(logging.INFO, logger="celery.app.trace")
    handle = submit("lewis.control.heartbeat", kwargs={"slot": "not-a-number"})
    with pytest.raises(InvalidInput, match="slot must be an integer"):
        handle.wait(timeout=20)
    assert handle.state == "FAILURE"

    # logged as a refusal: one INFO line, no ERROR, no traceback (the caller's error, not ours).
    # Celery's trace stores the failure (which wakes this wait) before it logs the line: wait
    # for the line rather than race the worker thread to it.
    def lines_of_the_task() -> list[logging.LogRecord]:
        return [
            r for r in caplog.records if handle.id in r.getMessage() and r.name.startswith("celery")
        ]

    wait_for(lambda: bool(lines_of_the_task()), timeout=10, what="the task's log line")
    lines = lines_of_the_task()
    assert lines and all(r.levelno < logging.WARNING and not r.exc_info for r in lines), [
        (r.levelname, r.getMessage()) for r in lines
    ]
    assert any(
        "raised expected" in r.getMessage() and "slot must be an integer" in r.getMessage()
        for r in lines
    )
    # the worker still serves the next task
    assert submit("lewis.control.heartbeat", kwargs={"slot": 1}).wait(timeout=20)["slot"] == 1


def test_queue_depth_counts_ready_priority_and_unacked(redis_client: Any) -> None:
    import json

    # (on the wiped test db, never the live workers' queues)
    redis_client.lpush("depth-q", "a", "b")
    redis_client.lpush("depth-q\x06\x163", "c")
    payload = {"properties": {"delivery_info": {"exchange": "", "routing_key": "depth-q"}}}
    redis_client.hset("unacked", "tag1", json.dumps([payload, "", "depth-q"]))
    other = {"properties": {"delivery_info": {"exchange": "", "routing_key": "elsewhere"}}}
    redis_client.hset("unacked", "tag2", json.dumps([other, "", "elsewhere"]))
    depth = queue_depths(redis_client, ["depth-q"])["depth-q"]
    assert (depth.ready, depth.unacked, depth.total) == (3, 1, 4)
