"""One chunk of an HTTP batch, fetched and stored: what ``lewis.http.fetch_chunk`` calls.

The chunk's requests run on the process's loop with its one fetch pool; this (the task's)
thread persists the finished URLs every :data:`FLUSH_EVERY` seconds, so progress moves while a
chunk runs, and watches the batch's cancel flag and the chunk's deadline (a thread pool
enforces no time limit: this does). A URL the deadline or a cancel left unfetched gets an
outcome saying so, so every index of the chunk ends with exactly one stored row.

The rows go where the task says: it hands in its :class:`BatchRows` (storage/http.py's
HttpRows) and, for the chunk's rows, either the same or this process's row writer
(infra/rowwriter.py); both are a :class:`ChunkRows`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..domain.httpclient import TIMEOUT
from ..domain.httpfetch import HttpOutcome
from ..domain.redact import redact_url
from .cancel import CHECK_INTERVAL, CancelCheck
from .config import get_settings
from .runtime import WorkerRuntime

CANCELLED = "cancelled"  # error class of a URL that a cancel left unfetched
FLUSH_EVERY = 0.5  # seconds between writes of a running chunk's finished URLs (progress)


class ChunkRows(Protocol):
    """Where a chunk's per-URL rows go (storage/http.py's HttpRows, or the row writer)."""

    def store(self, batch_id: str, start: int, outcomes: Sequence[HttpOutcome]) -> int:
        """Store ``outcomes`` (indexes from ``start``) once each; how many rows were new."""
        ...


class BatchRows(ChunkRows, Protocol):
    """A batch's own row too (storage/http.py's HttpRows)."""

    def save_batch(self, batch_id: str, *, total: int, request: Mapping[str, Any] | None) -> bool:
        """Create the batch's row once; False when it was there already."""
        ...


@dataclass(frozen=True)
class FetchedChunk:
    """A chunk's outcomes in index order and how many of their rows were new."""

    outcomes: list[HttpOutcome]
    new: int


def fetch_and_store(
    rt: WorkerRuntime,
    rows: ChunkRows,
    batch_id: str,
    start: int,
    requests: list[Any],
    budget: float,
    deadline: float,
) -> FetchedChunk:
    """Fetch ``requests`` (indexes ``start``…) of ``batch_id`` until done, cancelled or past
    ``deadline`` (monotonic), storing each URL's row once in ``rows`` as it finishes."""
    began = time.monotonic()
    finished: deque[HttpOutcome] = deque()  # appended on the loop thread, drained here
    done: dict[int, HttpOutcome] = {}
    future = asyncio.run_coroutine_threadsafe(
        _fetch(rt, requests, budget, finished.append), rt.loop_runtime.loop
    )
    cancelled = CancelCheck(rt.redis(), batch_id)
    new, stopped, flushed = 0, False, time.monotonic()
    while True:
        try:
            future.result(timeout=CHECK_INTERVAL)
            break
        except concurrent.futures.TimeoutError:
            if cancelled():  # in-flight requests end, queued ones are dropped
                future.cancel()
                stopped = True
                break
            if time.monotonic() - flushed >= FLUSH_EVERY:
                new += _persist(rows, batch_id, start, finished, done)
                flushed = time.monotonic()
            if time.monotonic() > deadline:
                future.cancel()
                break
    new += _persist(rows, batch_id, start, finished, done)
    missing = [
        (_cancelled if stopped else _out_of_time)(i, requests[i], deadline - began)
        for i in range(len(requests))
        if i not in done
    ]
    if missing:
        finished.extend(missing)
        new += _persist(rows, batch_id, start, finished, done)
    return FetchedChunk([done[i] for i in range(len(requests))], new)


async def _fetch(
    rt: WorkerRuntime, requests: list[Any], budget: float, on_result: Callable[[HttpOutcome], None]
) -> list[HttpOutcome]:
    pool = await rt.fetch_pool()
    return await pool.fetch(requests, total_timeout=budget, on_result=on_result)


def _out_of_time(index: int, item: Any, seconds: float) -> HttpOutcome:
    url = str(item.get("url", "")) if isinstance(item, Mapping) else str(item)
    method = str(item.get("method") or "GET") if isinstance(item, Mapping) else "GET"
    cap = get_settings().http.max_url_length
    url = redact_url(url if len(url) <= cap else url[:cap] + "…")
    return HttpOutcome(
        index,
        url,
        method,
        error=TIMEOUT,
        attempts=0,
        message=f"the chunk's time ({seconds:.0f} s) ran out before this URL",
    )


def _cancelled(index: int, item: Any, _seconds: float) -> HttpOutcome:
    outcome = _out_of_time(index, item, _seconds)
    return HttpOutcome(
        index,
        outcome.url,
        outcome.method,
        error=CANCELLED,
        attempts=0,
        message="the batch was cancelled before this URL was fetched",
    )


def _persist(
    rows: ChunkRows,
    batch_id: str,
    start: int,
    finished: deque[HttpOutcome],
    done: dict[int, HttpOutcome],
) -> int:
    """Store what finished since the last call; how many rows were new."""
    outcomes = []
    while finished:
        outcome = finished.popleft()
        if outcome.index not in done:
            done[outcome.index] = outcome
            outcomes.append(outcome)
    if not outcomes:
        return 0
    return rows.store(batch_id, start, outcomes)


def save_batch_once(
    rt: WorkerRuntime, rows: BatchRows, batch_id: str, total: int, request: Any
) -> None:
    """Create the batch row: whichever chunk runs first does; the rest of a process's chunks
    skip the write (and the database lock it takes)."""
    if rt.batch_saved(batch_id):
        return
    rows.save_batch(
        batch_id, total=total, request=request if isinstance(request, Mapping) else None
    )
    rt.note_batch_saved(batch_id)


__all__ = [
    "CANCELLED",
    "FLUSH_EVERY",
    "BatchRows",
    "ChunkRows",
    "FetchedChunk",
    "fetch_and_store",
    "save_batch_once",
]
