"""HTTP batches and their per-URL results.

Results are keyed (batch id, index in the request): a chunk of a batch that runs twice inserts
nothing the second time, and the batch's done/ok/failed counters move only by the rows that
were really new, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .db import session_scope
from .models import HttpBatchRow, HttpResultRow, utcnow
from .rows import fetch, increment, insert_new, json_text, upsert
from .scans import TERMINAL

if TYPE_CHECKING:
    from ..domain.httpfetch import HttpOutcome

RESULT_FIELDS = (
    "url",
    "final_url",
    "method",
    "status",
    "error_class",
    "error",
    "bytes",
    "sha256",
    "truncated",
    "timings",
    "redirects",
    "headers",
)
_DEFAULTS = {"method": "GET", "truncated": False}
_COLUMNS = ("batch_id", "idx", *RESULT_FIELDS)


def save_http_batch(
    session: Session,
    batch_id: str,
    *,
    total: int,
    request: Mapping[str, Any] | None = None,
    status: str = "running",
) -> bool:
    """Create the batch once; a second call with the same id changes nothing (returns False)."""
    row = {
        "id": batch_id,
        "created_at": utcnow(),
        "status": status,
        "total": total,
        "request": dict(request) if request is not None else None,
    }
    return bool(upsert(session, HttpBatchRow, [row]))


def save_http_results(session: Session, batch_id: str, results: Iterable[Mapping[str, Any]]) -> int:
    """Store results (mappings with ``idx``, ``url`` and any of RESULT_FIELDS); returns how
    many were new. See :func:`save_http_rows`."""
    return save_http_rows(
        session,
        batch_id,
        (
            (int(r["idx"]), *(r.get(name, _DEFAULTS.get(name)) for name in RESULT_FIELDS))
            for r in results
        ),
    )


def save_http_outcomes(
    session: Session, batch_id: str, start: int, outcomes: Iterable[HttpOutcome]
) -> int:
    """Store a chunk's outcomes, their indexes counted from ``start``; returns how many were
    new. The io worker's path: each outcome goes straight to a row tuple, no dict per row."""
    return save_http_rows(
        session,
        batch_id,
        (
            (
                start + o.index,
                o.url,
                o.final_url,
                o.method,
                o.status,
                o.error,
                o.message,
                o.bytes,
                o.sha256,
                o.truncated,
                o.timings.to_dict(),
                [hop.to_dict() for hop in o.redirects],
                dict(o.headers),
            )
            for o in outcomes
        ),
    )


@dataclass(frozen=True)
class HttpRows:
    """A batch's row and its chunks' rows as an io chunk writes them (infra/batchfetch.py's
    BatchRows), each call in a session of its own from ``sessions``."""

    sessions: Callable[[], AbstractContextManager[Session]]

    def save_batch(self, batch_id: str, *, total: int, request: Mapping[str, Any] | None) -> bool:
        with self.sessions() as session:
            return save_http_batch(session, batch_id, total=total, request=request)

    def store(self, batch_id: str, start: int, outcomes: Sequence[HttpOutcome]) -> int:
        with self.sessions() as session:
            return save_http_outcomes(session, batch_id, start, outcomes)


def http_rows(engine: Engine) -> HttpRows:
    """:class:`HttpRows` on ``engine`` (what the row-writer process stores with)."""
    return HttpRows(lambda: session_scope(engine))


def save_http_rows(session: Session, batch_id: str, rows: Iterable[Sequence[Any]]) -> int:
    """Store results given as ``(idx, *RESULT_FIELDS)`` tuples (JSON fields as Python values);
    returns how many were new.

    A result counts as failed when it carries an ``error_class``, else as ok. The rows go in
    by multi-row INSERTs (:func:`~.rows.insert_new`), ok and failed ones apart, so the two
    row counts are the counters' moves without reading a row back. An index given twice in
    one call: the first one stands.
    """
    ok: dict[int, tuple[Any, ...]] = {}
    failed: dict[int, tuple[Any, ...]] = {}
    for (
        idx,
        url,
        final_url,
        method,
        status,
        error_class,
        error,
        size,
        sha256,
        truncated,
        timings,
        redirects,
        headers,
    ) in rows:
        if idx in ok or idx in failed:
            continue
        (failed if error_class else ok)[idx] = (
            batch_id,
            idx,
            url,
            final_url,
            method or "GET",
            status,
            error_class,
            error,
            size,
            sha256,
            bool(truncated),
            json_text(timings),
            json_text(redirects),
            json_text(headers),
        )
    new_ok = insert_new(session, HttpResultRow, _COLUMNS, list(ok.values()))
    new_failed = insert_new(session, HttpResultRow, _COLUMNS, list(failed.values()))
    new = new_ok + new_failed
    if new:
        increment(session, HttpBatchRow, {"id": batch_id}, done=new, ok=new_ok, failed=new_failed)
    return new


def finish_http_batch(
    session: Session,
    batch_id: str,
    *,
    status: str = "done",
    summary: Mapping[str, Any] | None = None,
) -> bool:
    """Set the batch's status and summary; a terminal status stamps ``finished_at`` once."""
    values: dict[str, Any] = {"status": status}
    if summary is not None:
        values["summary"] = dict(summary)
    changed = session.execute(
        update(HttpBatchRow).where(HttpBatchRow.id == batch_id).values(values)
    )
    hit = bool(changed.rowcount)  # type: ignore[attr-defined]
    if hit and status in TERMINAL:
        session.execute(
            update(HttpBatchRow)
            .where(HttpBatchRow.id == batch_id, HttpBatchRow.finished_at.is_(None))
            .values(finished_at=utcnow())
        )
    return hit


def cancel_http_batch(
    session: Session, batch_id: str, *, total: int, request: Mapping[str, Any] | None = None
) -> bool:
    """Move a batch that has not ended to ``cancelled`` (creating its row if no chunk has yet);
    False if it had ended."""
    save_http_batch(session, batch_id, total=total, request=request)
    stmt = (
        update(HttpBatchRow)
        .where(HttpBatchRow.id == batch_id, HttpBatchRow.status.not_in(TERMINAL))
        .values(status="cancelled", finished_at=utcnow())
    )
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def get_http_batch(session: Session, batch_id: str) -> HttpBatchRow | None:
    """One batch with its counters, or None."""
    return fetch(session, HttpBatchRow, batch_id)


def get_http_results(
    session: Session,
    batch_id: str,
    *,
    offset: int = 0,
    limit: int = 1000,
    failed_only: bool = False,
) -> list[HttpResultRow]:
    """A page of a batch's results in request order."""
    stmt = select(HttpResultRow).where(HttpResultRow.batch_id == batch_id)
    if failed_only:
        stmt = stmt.where(HttpResultRow.error_class.is_not(None))
    return list(session.scalars(stmt.order_by(HttpResultRow.idx).offset(offset).limit(limit)))


def result_rows(
    session: Session,
    batch_id: str,
    *,
    offset: int = 0,
    limit: int = 1000,
    failed_only: bool = False,
) -> list[dict[str, Any]]:
    """:func:`get_http_results` as plain dicts (the handles' and the CLI's rows)."""
    return [
        {
            "index": r.idx,
            "url": r.url,
            "final_url": r.final_url,
            "method": r.method,
            "status": r.status,
            "error_class": r.error_class,
            "error": r.error,
            "bytes": r.bytes,
            "sha256": r.sha256,
            "truncated": r.truncated,
            "timings": r.timings,
            "redirects": r.redirects,
            "headers": r.headers,
        }
        for r in get_http_results(
            session, batch_id, offset=offset, limit=limit, failed_only=failed_only
        )
    ]


__all__ = [
    "HttpRows",
    "http_rows",
    "save_http_batch",
    "save_http_results",
    "save_http_rows",
    "save_http_outcomes",
    "finish_http_batch",
    "get_http_batch",
    "get_http_results",
    "result_rows",
]
