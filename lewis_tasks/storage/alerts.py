"""Alert history: every transition the engine committed, written once (issue 15)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import AlertHistoryRow
from .rows import delete_older, upsert


def record_transitions(session: Session, transitions: Iterable[Mapping[str, Any]]) -> int:
    """Store transitions (``Transition.to_dict()`` form); returns how many were new."""
    rows = [
        {
            "fingerprint": t["fingerprint"],
            "at": dt.datetime.fromtimestamp(t["at"], dt.UTC),
            "to_state": t["to_state"],
            "from_state": t["from_state"],
            "rule": t["rule"],
            "labels": dict(t.get("labels") or {}),
            "value": _finite(t.get("value")),
            "severity": t.get("severity") or "low",
            "summary": t.get("summary") or "",
        }
        for t in transitions
    ]
    return len(upsert(session, AlertHistoryRow, rows)) if rows else 0


def _finite(value: Any) -> float | None:
    # JSON (and PostgreSQL's float) take no infinity: a ratio over zero is kept as None
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return float(value)


def alert_history(
    session: Session, since: dt.datetime, rule: str | None = None
) -> list[AlertHistoryRow]:
    """Transitions at or after ``since``, oldest first (optionally of one rule)."""
    stmt = select(AlertHistoryRow).where(AlertHistoryRow.at >= since)
    if rule is not None:
        stmt = stmt.where(AlertHistoryRow.rule == rule)
    return list(session.scalars(stmt.order_by(AlertHistoryRow.at, AlertHistoryRow.fingerprint)))


def prune_alert_history(session: Session, older_than: dt.datetime) -> int:
    return delete_older(session, AlertHistoryRow, AlertHistoryRow.at, older_than)


__all__ = ["record_transitions", "alert_history", "prune_alert_history"]
