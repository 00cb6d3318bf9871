"""Heartbeats: one record per (slot, worker), newest per worker, pruned by age."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.engine import Engine

from lewis_tasks.storage import heartbeats as hb
from lewis_tasks.storage.db import session_scope

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_slot_is_the_interval_the_time_falls_in() -> None:
    assert hb.heartbeat_slot(100.0, 30) == 3
    assert hb.heartbeat_slot(119.99, 30) == 3
    assert hb.heartbeat_slot(120.0, 30) == 4
    with pytest.raises(ValueError, match="interval"):
        hb.heartbeat_slot(1.0, 0)


def test_a_slot_is_recorded_once_even_if_two_beats_fire_it(engine: Engine) -> None:
    with session_scope(engine) as s:
        assert hb.record_heartbeat(
            s, 7, "io@a", alive=True, rtt_ms=1.5, queues=["io"], recorded_at=T0
        )
    with session_scope(engine) as s:  # the second beat, a moment later
        assert not hb.record_heartbeat(s, 7, "io@a", alive=False, recorded_at=T0)
        assert hb.record_heartbeat(s, 7, "cpu@a", alive=True, recorded_at=T0)
        assert hb.record_heartbeat(
            s,
            8,
            "io@a",
            alive=True,
            rtt_ms=2.0,
            queues=["io"],
            recorded_at=T0 + dt.timedelta(seconds=30),
        )
    with session_scope(engine) as s:
        latest = hb.latest_heartbeats(s)
        assert [(r.worker, r.slot, r.alive) for r in latest] == [
            ("cpu@a", 7, True),
            ("io@a", 8, True),
        ]
        assert latest[1].queues == ["io"] and latest[1].rtt_ms == 2.0
        since = hb.heartbeats_since(s, T0, worker="io@a")
        assert [(r.slot, r.alive, r.rtt_ms) for r in since] == [(7, True, 1.5), (8, True, 2.0)]


def test_prune_removes_only_old_heartbeats(engine: Engine) -> None:
    with session_scope(engine) as s:
        for i in range(5):
            hb.record_heartbeat(s, i, "w", alive=True, recorded_at=T0 + dt.timedelta(hours=i))
    with session_scope(engine) as s:
        assert hb.prune_heartbeats(s, older_than=T0 + dt.timedelta(hours=3)) == 3
    with session_scope(engine) as s:
        assert [r.slot for r in hb.heartbeats_since(s, T0)] == [3, 4]
