"""HTTP batches and their per-URL results.

Results are keyed (batch id, index in the request): a chunk of a batch that runs twice inserts
nothing the second time, and the batch's done/ok/failed counters move only by the rows that
were really new, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import HttpBatch, HttpResult, utcnow
from .rows import fetch, increment, insert_new, json_text, upsert
from .scans import TERMINAL

RESULT_FIELDS = ("url", "final_url", "method", "status", "error_class", "error", "bytes",
                 "sha256", "truncated", "timings", "redirects", "headers")
_JSON_FIELDS = frozenset({"timings", "redirects", "headers"})
_DEFAULTS = {"method": "GET", "truncated": False}
_COLUMNS = ("batch_id", "idx", *RESULT_FIELDS)


def save_http_batch(session: Session, batch_id: str, *, total: int,
                    request: Mapping[str, Any] | None = None, status: str = "running") -> bool:
    """Create the batch once; a second call with the same id changes nothing (returns False)."""
    row = {"id": batch_id, "created_at": utcnow(), "status": status, "total": total,
           "request": dict(request) if request is not None else None}
    return bool(upsert(session, HttpBatch, [row]))


def save_http_results(session: Session, batch_id: str,
                      results: Iterable[Mapping[str, Any]]) -> int:
    """Store results (each with ``idx`` and ``url``); returns how many were new.

    A result counts as failed when it carries an ``error_class``, else as ok. The rows go in
    by multi-row INSERTs (:func:`~.rows.insert_new`), ok and failed ones apart, so the two
    row counts are the counters' moves without reading a row back. An index given twice in
    one call: the first one stands.
    """
    rows: dict[int, tuple[bool, tuple[Any, ...]]] = {}
    for r in results:
        idx = int(r["idx"])
        values = (batch_id, idx, *(_value(r, name) for name in RESULT_FIELDS))
        rows.setdefault(idx, (bool(r.get("error_class")), values))
    new_ok = insert_new(session, HttpResult, _COLUMNS, [v for bad, v in rows.values() if not bad])
    new_failed = insert_new(session, HttpResult, _COLUMNS, [v for bad, v in rows.values() if bad])
    new = new_ok + new_failed
    if new:
        increment(session, HttpBatch, {"id": batch_id}, done=new, ok=new_ok, failed=new_failed)
    return new


def _value(result: Mapping[str, Any], name: str) -> Any:
    value = result.get(name, _DEFAULTS.get(name))
    if name in _JSON_FIELDS:
        return json_text(value)
    if name == "truncated":
        return bool(value)
    return value


def finish_http_batch(session: Session, batch_id: str, *, status: str = "done",
                      summary: Mapping[str, Any] | None = None) -> bool:
    """Set the batch's status and summary; a terminal status stamps ``finished_at`` once."""
    values: dict[str, Any] = {"status": status}
    if summary is not None:
        values["summary"] = dict(summary)
    hit = bool(session.execute(update(HttpBatch).where(HttpBatch.id == batch_id)
                               .values(values)).rowcount)  # type: ignore[attr-defined]
    if hit and status in TERMINAL:
        session.execute(update(HttpBatch)
                        .where(HttpBatch.id == batch_id, HttpBatch.finished_at.is_(None))
                        .values(finished_at=utcnow()))
    return hit


def get_http_batch(session: Session, batch_id: str) -> HttpBatch | None:
    """One batch with its counters, or None."""
    return fetch(session, HttpBatch, batch_id)


def get_http_results(session: Session, batch_id: str, *, offset: int = 0,
                     limit: int = 1000, failed_only: bool = False) -> list[HttpResult]:
    """A page of a batch's results in request order."""
    stmt = select(HttpResult).where(HttpResult.batch_id == batch_id)
    if failed_only:
        stmt = stmt.where(HttpResult.error_class.is_not(None))
    return list(session.scalars(stmt.order_by(HttpResult.idx).offset(offset).limit(limit)))


__all__ = ["save_http_batch", "save_http_results", "finish_http_batch", "get_http_batch",
           "get_http_results"]
