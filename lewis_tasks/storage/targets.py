"""Targets: every address, network or hostname the platform was asked to look at."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import TargetRow, utcnow
from .rows import upsert


def upsert_targets(
    session: Session, targets: Iterable[tuple[str, str]], status: str = "active"
) -> int:
    """Record ``(value, kind)`` pairs (kind: ip, cidr, hostname); returns how many were new."""
    rows = [
        {"value": value, "kind": kind, "status": status, "first_seen": utcnow()}
        for value, kind in targets
    ]
    return len(upsert(session, TargetRow, rows, on=["value"]))


def mark_scanned(session: Session, values: Iterable[str], when: dt.datetime | None = None) -> int:
    """Stamp ``last_scanned`` on the given targets; returns how many rows changed."""
    stmt = (
        update(TargetRow)
        .where(TargetRow.value.in_(list(values)))
        .values(last_scanned=when or utcnow())
    )
    return int(session.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]


def set_target_status(session: Session, value: str, status: str) -> bool:
    """Change one target's status (e.g. active → retired); False if there is no such target."""
    stmt = update(TargetRow).where(TargetRow.value == value).values(status=status)
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def list_targets(session: Session, status: str | None = None, limit: int = 1000) -> list[TargetRow]:
    """Targets by value, optionally only those in ``status`` (uses idx_targets_status)."""
    stmt = select(TargetRow)
    if status is not None:
        stmt = stmt.where(TargetRow.status == status)
    return list(session.scalars(stmt.order_by(TargetRow.value).limit(limit)))


__all__ = ["upsert_targets", "mark_scanned", "set_target_status", "list_targets"]
