"""What the database holds, summed for the metrics collector (``lewis monitor``'s work panel):
scans and HTTP batches by status, findings by severity, and the newest few of each."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import FindingRow, HttpBatchRow, ScanRow


def stored_work(session: Session, limit: int = 5) -> dict[str, Any]:
    """Counts of scans and HTTP batches by status, findings by severity, the newest few."""
    scans = session.scalars(select(ScanRow).order_by(ScanRow.created_at.desc()).limit(limit))
    batches = session.scalars(
        select(HttpBatchRow).order_by(HttpBatchRow.created_at.desc()).limit(limit)
    )
    return {
        "scans_by_status": _grouped(session, ScanRow.status),
        "batches_by_status": _grouped(session, HttpBatchRow.status),
        "findings_by_severity": _grouped(session, FindingRow.severity),
        "recent_scans": [
            {
                "id": s.id,
                "status": s.status,
                "created": s.created_at.timestamp(),
                "ports_done": s.ports_done,
                "ports_total": s.ports_total,
                "open": s.open_count,
            }
            for s in scans
        ],
        "recent_batches": [
            {
                "id": b.id,
                "status": b.status,
                "created": b.created_at.timestamp(),
                "done": b.done,
                "total": b.total,
                "ok": b.ok,
                "failed": b.failed,
            }
            for b in batches
        ],
    }


def _grouped(session: Session, column: Any) -> dict[str, int]:
    return {
        str(k): int(n) for k, n in session.execute(select(column, func.count()).group_by(column))
    }


__all__ = ["stored_work"]
