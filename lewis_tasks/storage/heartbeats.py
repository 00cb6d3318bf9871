"""Worker heartbeats: one row per (interval slot, worker), so a slot is recorded exactly once.

``slot = floor(time / interval)``: two beats that both fire the same interval (a failover, a
late tick) write the same key, and the second write is a no-op that says so.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import HeartbeatRow, utcnow
from .rows import delete_older, upsert


def heartbeat_slot(timestamp: float, interval: float) -> int:
    """The interval slot ``timestamp`` (epoch seconds) falls in."""
    if interval <= 0:
        raise ValueError(f"heartbeat interval must be > 0 seconds, got {interval}")
    return math.floor(timestamp / interval)


def record_heartbeat(
    session: Session,
    slot: int,
    worker: str,
    *,
    alive: bool,
    rtt_ms: float | None = None,
    queues: Sequence[str] = (),
    recorded_at: dt.datetime | None = None,
) -> bool:
    """Record ``worker``'s state for ``slot``; False if that slot was already recorded."""
    row = {
        "slot": slot,
        "worker": worker,
        "alive": alive,
        "rtt_ms": rtt_ms,
        "queues": list(queues),
        "recorded_at": recorded_at or utcnow(),
    }
    return bool(upsert(session, HeartbeatRow, [row]))


def latest_heartbeats(session: Session) -> list[HeartbeatRow]:
    """The newest heartbeat of every worker, by worker name."""
    newest = (
        select(HeartbeatRow.worker, func.max(HeartbeatRow.slot).label("slot"))
        .group_by(HeartbeatRow.worker)
        .subquery()
    )
    stmt = (
        select(HeartbeatRow)
        .join(
            newest, (HeartbeatRow.worker == newest.c.worker) & (HeartbeatRow.slot == newest.c.slot)
        )
        .order_by(HeartbeatRow.worker)
    )
    return list(session.scalars(stmt))


def heartbeats_since(
    session: Session, since: dt.datetime, worker: str | None = None
) -> list[HeartbeatRow]:
    """Heartbeats recorded at or after ``since``, oldest first (optionally of one worker)."""
    stmt = select(HeartbeatRow).where(HeartbeatRow.recorded_at >= since)
    if worker is not None:
        stmt = stmt.where(HeartbeatRow.worker == worker)
    return list(session.scalars(stmt.order_by(HeartbeatRow.recorded_at, HeartbeatRow.worker)))


def prune_heartbeats(session: Session, older_than: dt.datetime) -> int:
    """Delete heartbeats recorded before ``older_than`` (retention); returns how many went."""
    return delete_older(session, HeartbeatRow, HeartbeatRow.recorded_at, older_than)


__all__ = [
    "heartbeat_slot",
    "record_heartbeat",
    "latest_heartbeats",
    "heartbeats_since",
    "prune_heartbeats",
]
