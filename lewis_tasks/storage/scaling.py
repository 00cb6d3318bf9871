"""Scaling decisions: claimed once per (slot, queue), then completed with the actuator's word.

:func:`claim_decision` inserts the decision or does nothing when the slot's row exists: two
beats firing the same slot (a failover, a late tick) compute twice but record — and
actuate — once. :func:`record_outcome` adds what the actuator said (or its error).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..domain.scaling import Recommendation, ScalingDecision
from .models import ScalingDecisionRow, utcnow
from .rows import delete_older, upsert


def claim_decision(
    session: Session,
    slot: int,
    decision: ScalingDecision,
    actuator: str,
    decided_at: dt.datetime | None = None,
) -> bool:
    """Record ``decision`` for ``slot``; False when that slot's decision was already taken."""
    row = {
        "slot": slot,
        "queue": decision.queue,
        "decided_at": decided_at or utcnow(),
        "action": decision.action,
        "current": decision.current,
        "desired": decision.desired,
        "recommended": decision.recommended,
        "reason": decision.reason,
        "inputs": decision.inputs,
        "actuator": actuator,
    }
    return bool(upsert(session, ScalingDecisionRow, [row]))


def record_outcome(
    session: Session, slot: int, queue: str, *, outcome: dict[str, Any] | None, error: str | None
) -> None:
    session.execute(
        update(ScalingDecisionRow)
        .where(ScalingDecisionRow.slot == slot, ScalingDecisionRow.queue == queue)
        .values(outcome=outcome, error=error)
    )


def recent_recommendations(
    session: Session, queue: str, since: dt.datetime
) -> list[Recommendation]:
    """The queue's recommendations decided at or after ``since`` (the scale-down window)."""
    stmt = select(ScalingDecisionRow.decided_at, ScalingDecisionRow.recommended).where(
        ScalingDecisionRow.queue == queue,
        ScalingDecisionRow.decided_at >= since,
        ScalingDecisionRow.recommended.is_not(None),
    )
    return [
        Recommendation(at.timestamp(), int(n)) for at, n in session.execute(stmt) if n is not None
    ]


@dataclass(frozen=True)
class DecisionLedger:
    """The decision job's record of its decisions (infra/scaling.py's Ledger), each call in a
    session of its own from ``sessions``."""

    sessions: Callable[[], AbstractContextManager[Session]]

    def history(self, queue: str, since: float) -> list[Recommendation]:
        with self.sessions() as session:
            return recent_recommendations(session, queue, dt.datetime.fromtimestamp(since, dt.UTC))

    def claim(self, slot: int, decision: ScalingDecision, actuator: str) -> bool:
        with self.sessions() as session:
            return claim_decision(session, slot, decision, actuator)

    def record(
        self, slot: int, queue: str, *, outcome: dict[str, Any] | None, error: str | None
    ) -> None:
        with self.sessions() as session:
            record_outcome(session, slot, queue, outcome=outcome, error=error)


def latest_decisions(
    session: Session, queue: str | None = None, limit: int = 10
) -> list[ScalingDecisionRow]:
    """The newest decisions, newest first (optionally of one queue)."""
    stmt = select(ScalingDecisionRow)
    if queue is not None:
        stmt = stmt.where(ScalingDecisionRow.queue == queue)
    return list(
        session.scalars(
            stmt.order_by(ScalingDecisionRow.decided_at.desc(), ScalingDecisionRow.queue).limit(
                limit
            )
        )
    )


def prune_decisions(session: Session, older_than: dt.datetime) -> int:
    return delete_older(session, ScalingDecisionRow, ScalingDecisionRow.decided_at, older_than)


__all__ = [
    "DecisionLedger",
    "claim_decision",
    "record_outcome",
    "recent_recommendations",
    "latest_decisions",
    "prune_decisions",
]
