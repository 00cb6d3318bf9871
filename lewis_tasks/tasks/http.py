"""HTTP batches and load tests as tasks: chunks and parts on io, merges on cpu.

A batch is a chord: ``fetch_chunk`` tasks (io) fetch their slice of the URLs on the worker
process's persistent loop with its one session, persisting per-URL rows as they finish (so
progress moves while a chunk runs), and ``merge`` (cpu) sums the chunks and closes the batch.
A batch of one chunk is no chord: that chunk (``options["merge"]``) closes the batch in place,
and ``abort`` is its errback.

A load test is a chord too: ``loadtest_part`` tasks (io) meet at a Redis barrier so N parts
on N io processes start together, each returns its LoadResult with its histogram, and
``loadtest_merge`` (cpu) merges the histograms exactly and persists the run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from ..domain.histogram import LatencyHistogram
from ..domain.httpclient import TIMEOUT, create_session
from ..domain.httpfetch import FetchPool, HttpOutcome, summarise
from ..domain.loadgen import LoadResult, run_loadtest
from ..domain.redact import redact_url
from ..domain.scope import Scope
from ..errors import InvalidInput
from ..infra import aio
from ..infra.barrier import RedisBarrier
from ..infra.cancel import CHECK_INTERVAL, CancelCheck
from ..infra.celery_app import app
from ..infra.config import get_settings
from ..infra.planning import (
    BARRIER_LEAD,
    batch_plan,
    check_batch_size,
    check_loadtest,
    loadtest_budget,
)
from ..infra.progress import LOADTEST_PROGRESS_KEY, ProgressWriter
from ..infra.redis_client import get_redis
from ..infra.task import LewisTask, stored_failure
from .rowwriter import row_writer
from .scanprocess import process_state

log = logging.getLogger(__name__)

CANCELLED = "cancelled"  # error class of a URL that a cancel left unfetched
FLUSH_EVERY = 0.5  # seconds between writes of a running chunk's finished URLs (progress)
PROCESSES_KEY = "lewis:loadtest:{run}:processes"  # hash: worker process → the part it runs
BARRIER_KEY = "lewis:loadtest:{run}:barrier"
ROWS_IN_RESULT = 100  # a one-chunk batch this small returns its rows: the CLI reads no database
FINAL_LINE_WAIT = 2.0  # seconds a part waits for its last progress line to be written


def process_id() -> str:
    """This worker process, as ``host:pid`` (prefork children and thread workers alike)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --- batches ---------------------------------------------------------------------------------

@app.task(name="lewis.http.fetch_chunk")
def fetch_chunk(batch_id: str, start: int, requests: list[Any], options: dict[str, Any]) -> dict[str, Any]:
    """Fetch ``requests`` (indexes ``start``…) of batch ``batch_id``; rows persisted once each."""
    _check_batch_id(batch_id)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise InvalidInput(f"start must be an index ≥ 0, not {start!r}")
    if not isinstance(requests, list) or not requests:
        raise InvalidInput("a chunk needs a non-empty list of requests")
    if not isinstance(options, Mapping):
        raise InvalidInput("options must be a mapping")
    settings = get_settings()
    check_batch_size(settings, len(requests))
    total = int(options.get("total") or start + len(requests))
    plan = batch_plan(settings, total, options.get("timeout"))
    budget = plan.budget
    began = time.monotonic()
    _save_batch(batch_id, total, options.get("request"))

    finished: deque[HttpOutcome] = deque()  # appended on the loop thread, drained here
    done: dict[int, HttpOutcome] = {}
    future = asyncio.run_coroutine_threadsafe(
        _fetch(requests, budget, finished.append), aio.runtime().loop)
    deadline = began + plan.chunk_seconds  # thread pools enforce no time limit: we do
    cancelled = CancelCheck(get_redis(), batch_id)
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
                new += _persist(batch_id, start, finished, done)
                flushed = time.monotonic()
            if time.monotonic() > deadline:
                future.cancel()
                break
    new += _persist(batch_id, start, finished, done)
    missing = [(_cancelled if stopped else _out_of_time)(i, requests[i], deadline - began)
               for i in range(len(requests)) if i not in done]
    if missing:
        finished.extend(missing)
        new += _persist(batch_id, start, finished, done)
    outcomes = [done[i] for i in range(len(requests))]
    latency = LatencyHistogram()
    for outcome in outcomes:
        if outcome.ok:
            latency.record(int(outcome.timings.total_ms * 1000))
    result = {"batch_id": batch_id, "start": start, "count": len(outcomes), "new": new,
              "summary": summarise(outcomes), "bytes": sum(o.bytes for o in outcomes),
              "latency": latency.to_dict(), "process": process_id(),
              "seconds": round(time.monotonic() - began, 3)}
    if options.get("merge"):  # the batch's only chunk: no chord, it closes the batch itself
        return _merge_batch([result], batch_id, rows_up_to=ROWS_IN_RESULT)
    return result


async def _fetch(requests: list[Any], budget: float,
                 on_result: Callable[[HttpOutcome], None]) -> list[HttpOutcome]:
    pool = await _process_pool()
    return await pool.fetch(requests, total_timeout=budget, on_result=on_result)


_pool: FetchPool | None = None  # touched on the loop thread only


async def _process_pool() -> FetchPool:
    """The process's one FetchPool on its one session: the chunks running in this process
    share ``network.max_connections`` fetchers, first chunk first."""
    global _pool
    session = await aio.runtime().session()
    if _pool is None or _pool.session is not session:  # first use, or a new session/process
        settings = get_settings()
        _pool = FetchPool(session, concurrency=settings.network.max_connections,
                          max_body_bytes=settings.http.max_body_bytes,
                          max_redirects=settings.http.max_redirects, retries=settings.http.retries,
                          max_url_length=settings.http.max_url_length)
    return _pool


def _out_of_time(index: int, item: Any, seconds: float) -> HttpOutcome:
    url = str(item.get("url", "")) if isinstance(item, Mapping) else str(item)
    method = str(item.get("method") or "GET") if isinstance(item, Mapping) else "GET"
    cap = get_settings().http.max_url_length
    url = redact_url(url if len(url) <= cap else url[:cap] + "…")
    return HttpOutcome(index, url, method, error=TIMEOUT, attempts=0,
                       message=f"the chunk's time ({seconds:.0f} s) ran out before this URL")


def _cancelled(index: int, item: Any, _seconds: float) -> HttpOutcome:
    outcome = _out_of_time(index, item, _seconds)
    return HttpOutcome(index, outcome.url, outcome.method, error=CANCELLED, attempts=0,
                       message="the batch was cancelled before this URL was fetched")


def _persist(batch_id: str, start: int, finished: deque[HttpOutcome],
             done: dict[int, HttpOutcome]) -> int:
    """Store what finished since the last call; how many rows were new."""
    outcomes = []
    while finished:
        outcome = finished.popleft()
        if outcome.index not in done:
            done[outcome.index] = outcome
            outcomes.append(outcome)
    if not outcomes:
        return 0
    settings = get_settings()
    if settings.http.row_writer:
        return row_writer(settings.database).store(batch_id, start, outcomes)
    from ..storage.db import get_engine, session_scope
    from ..storage.http import save_http_outcomes

    with session_scope(get_engine()) as session:
        return save_http_outcomes(session, batch_id, start, outcomes)


_saved_batches: deque[str] = deque(maxlen=256)  # batches this process has created already
_saved_lock = threading.Lock()  # pool threads share the deque (`in` must not race an append)


def _save_batch(batch_id: str, total: int, request: Any) -> None:
    """Create the batch row: whichever chunk runs first does; the rest of a process's chunks
    skip the write (and the database lock it takes)."""
    from ..storage.db import get_engine, session_scope
    from ..storage.http import save_http_batch

    with _saved_lock:
        if batch_id in _saved_batches:
            return
    with session_scope(get_engine()) as session:
        save_http_batch(session, batch_id, total=total,
                        request=request if isinstance(request, Mapping) else None)
    with _saved_lock:
        _saved_batches.append(batch_id)


@app.task(name="lewis.http.merge")
def merge(results: list[dict[str, Any]], batch_id: str) -> dict[str, Any]:
    """Chord callback: the chunks' counts and latencies summed, the batch closed. Idempotent."""
    return _merge_batch(results, batch_id)


def _merge_batch(results: Any, batch_id: Any, rows_up_to: int = 0) -> dict[str, Any]:
    """The chunks summed and the batch closed; a batch of at most ``rows_up_to`` URLs also
    returns its stored rows (read back, so a redelivery returns what the first one stored)."""
    from ..storage.db import get_engine, session_scope
    from ..storage.http import finish_http_batch, get_http_batch, result_rows

    _check_batch_id(batch_id)
    if not isinstance(results, list) or not all(isinstance(r, Mapping) for r in results):
        raise InvalidInput("merge needs the list of chunk results")
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    latency = LatencyHistogram()
    for chunk in sorted(results, key=lambda r: int(r.get("start", 0))):
        for key, n in chunk["summary"]["statuses"].items():
            statuses[key] = statuses.get(key, 0) + int(n)
        for key, n in chunk["summary"]["errors"].items():
            errors[key] = errors.get(key, 0) + int(n)
        latency.merge(LatencyHistogram.from_dict(chunk["latency"]))
    with session_scope(get_engine()) as session:
        batch = get_http_batch(session, batch_id)
        if batch is None:
            raise InvalidInput(f"no HTTP batch {batch_id!r}")
        summary = {"total": batch.total, "done": batch.done, "ok": batch.ok,
                   "failed": batch.failed, "statuses": dict(sorted(statuses.items())),
                   "errors": dict(sorted(errors.items())),
                   "bytes": sum(int(r.get("bytes", 0)) for r in results),
                   "latency_ms": latency.summary(), "chunks": len(results),
                   "processes": sorted({str(r.get("process")) for r in results}),
                   "slowest_chunk_s": max((float(r.get("seconds", 0)) for r in results), default=0.0)}
        finish_http_batch(session, batch_id, summary=summary,
                          status="cancelled" if batch.status == "cancelled" else "done")
        rows = (result_rows(session, batch_id, limit=rows_up_to)
                if 0 < batch.total <= rows_up_to else None)
    return {"batch_id": batch_id, **summary, **({"rows": rows} if rows is not None else {})}


@app.task(name="lewis.http.abort")
def abort(failed_task_id: str, kind: str, run_id: str) -> dict[str, Any]:
    """Errback of a failed batch or load test chord: record the run as failed, with why."""
    from ..storage.db import get_engine, session_scope
    from ..storage.http import finish_http_batch
    from ..storage.runs import save_loadtest

    reason = _failure_of(failed_task_id)
    with session_scope(get_engine()) as session:
        if kind == "batch" and _is_cancelled_batch(session, run_id):
            pass  # its revoked chunks fail the chord: it stays cancelled
        elif kind == "batch":
            finish_http_batch(session, run_id, status="failed", summary={"error": reason})
        elif kind == "loadtest":
            save_loadtest(session, run_id, status="failed", result={"error": reason},
                          finished_at=_now())
        else:
            raise InvalidInput(f"abort: unknown kind {kind!r}")
    return {"kind": kind, "id": run_id, "error": reason}


def _is_cancelled_batch(session: Any, batch_id: str) -> bool:
    from ..storage.http import get_http_batch

    batch = get_http_batch(session, batch_id)
    return batch is not None and batch.status == "cancelled"


def _failure_of(task_id: str) -> str:
    """Why ``task_id`` failed, in words."""
    failure = stored_failure(app, task_id)
    return str(failure) if failure is not None else "a part failed"


def _check_batch_id(batch_id: Any) -> None:
    if not isinstance(batch_id, str) or not 0 < len(batch_id) <= 64:
        raise InvalidInput(f"batch id must be a string of 1..64 characters, not {batch_id!r}")


# --- load tests ------------------------------------------------------------------------------

class LoadtestPartTask(LewisTask):
    """Time limits that cover the barrier, the longest allowed run and its drain, read from
    the settings each time (a part is checked against the visibility timeout at start-up)."""

    @property
    def soft_time_limit(self) -> float:
        return loadtest_budget(get_settings()).time_limits(None)[0]

    @property
    def time_limit(self) -> float:
        return loadtest_budget(get_settings()).time_limits(None)[1]


@app.task(name="lewis.http.loadtest_part", bind=True, base=LoadtestPartTask)
def loadtest_part(self: LoadtestPartTask, run_id: str, part: int, parts: int,
                  spec: dict[str, Any]) -> dict[str, Any]:
    """One part of load test ``run_id``: wait for the other parts, then load the URL.

    Parts belong on different io processes: a part that arrives in a process already running
    another part of the run is handed back to the queue (at most ``2 × parts`` times), so an
    idle process takes it; past that it runs here, sharing the loop, and says so.
    """
    _check_part(run_id, part, parts, spec)
    settings = get_settings()
    budget = loadtest_budget(settings)
    check_loadtest(settings, concurrency=spec["concurrency"], duration=spec.get("duration"),
                   requests=spec.get("requests"), rate=spec.get("rate"), workers=1,
                   method=str(spec.get("method", "GET")), headers=spec.get("headers"),
                   body=spec.get("body"), timeout=spec.get("timeout"), ramp=spec.get("ramp"))
    client = get_redis()
    ttl = int(budget.time_limits(None)[1]) + 60
    shared = False
    if parts > 1:
        me, key = process_id(), PROCESSES_KEY.format(run=run_id)
        pipe = client.pipeline(transaction=True)
        pipe.hsetnx(key, me, part)
        pipe.hget(key, me)
        pipe.expire(key, ttl)
        _, holder, _ = pipe.execute()
        if int(holder) != part:  # this process runs another part of the run already
            bounces = self.request.retries or 0
            if bounces < 2 * parts:
                raise self.retry(countdown=0, max_retries=2 * parts)
            shared = True
    barrier = RedisBarrier(client, BARRIER_KEY.format(run=run_id), parties=parts,
                           timeout=budget.barrier, lead=BARRIER_LEAD)
    start_at = barrier.wait(party=f"{self.request.id or run_id}:{part}")
    progress = ProgressWriter(client, LOADTEST_PROGRESS_KEY.format(run=run_id), str(part), ttl,
                              process_state()["publisher"])
    run_for = spec.get("duration")
    result = aio.run(_load(spec, start_at, budget.max_duration, progress.publish),
                     timeout=budget.time_limits(run_for)[0])
    progress.publish({"elapsed_s": round(result.duration_s, 3), "requests": result.requests,
                      "errors": sum(result.errors.values()), "rps": round(result.rps, 1),
                      "done": True})
    progress.flush(FINAL_LINE_WAIT)
    return {**result.to_dict(), "part": part, "process": process_id(), "shared": shared,
            "handed_back": self.request.retries or 0}


async def _load(spec: Mapping[str, Any], start_at: float, max_duration: float,
                report: Callable[[dict[str, Any]], None]) -> LoadResult:
    """The run on this process's loop, with a session of its own sized to the part's
    concurrency: the shared session's per-host limit would throttle it, and a load test
    must not starve the batches sharing that pool."""
    settings = get_settings()
    lt = settings.loadtest
    session = create_session(Scope.from_allow(settings.scope.allow),
                             max_connections=int(spec["concurrency"]), limit_per_host=0,
                             connect_timeout=settings.network.connection_timeout,
                             read_timeout=None, keep_alive=settings.network.keep_alive)
    async with session:
        return await run_loadtest(session, str(spec["url"]), concurrency=int(spec["concurrency"]),
                                  duration=spec.get("duration"), requests=spec.get("requests"),
                                  rate=spec.get("rate"), method=str(spec.get("method", "GET")),
                                  headers=spec.get("headers"), body=spec.get("body"),
                                  timeout=spec.get("timeout"), ramp=spec.get("ramp"),
                                  max_body=lt.max_body_bytes,
                                  start_at=start_at, max_duration=max_duration,
                                  max_concurrency=lt.max_concurrency, max_rate=lt.max_rate,
                                  max_requests=lt.max_requests, on_progress=report)


def _check_part(run_id: Any, part: Any, parts: Any, spec: Any) -> None:
    if not isinstance(run_id, str) or not 0 < len(run_id) <= 64:
        raise InvalidInput(f"run id must be a string of 1..64 characters, not {run_id!r}")
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise InvalidInput(f"parts must be a whole number ≥ 1, not {parts!r}")
    if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < parts:
        raise InvalidInput(f"part must be in 0..{parts - 1}, not {part!r}")
    if not isinstance(spec, Mapping) or "url" not in spec or "concurrency" not in spec:
        raise InvalidInput("a part's spec needs at least url and concurrency")


@app.task(name="lewis.http.loadtest_merge")
def loadtest_merge(results: list[dict[str, Any]], run_id: str,
                   request: dict[str, Any]) -> dict[str, Any]:
    """Chord callback: the parts as one result (histograms merged bucket by bucket, never
    percentiles averaged), persisted once; a second run returns the stored result."""
    from ..storage.db import get_engine, session_scope
    from ..storage.models import LoadtestRow
    from ..storage.runs import get_run, save_loadtest

    if not isinstance(results, list) or not results:
        raise InvalidInput("loadtest_merge needs the list of part results")
    parts = sorted(results, key=lambda r: int(r.get("part", 0)))
    merged = LoadResult.merge(LoadResult.from_dict(p) for p in parts)
    processes = sorted({str(p.get("process")) for p in parts})
    result = {**merged.to_dict(), "run_id": run_id, "processes": processes,
              "shared_process": len(processes) < len(parts),
              "handed_back": sum(int(p.get("handed_back", 0)) for p in parts),
              "by_part": [{"part": p.get("part"), "process": p.get("process"),
                           "requests": p["requests"], "rps": p["rps"],
                           "p50_ms": p["latency_ms"]["p50_ms"], "p99_ms": p["latency_ms"]["p99_ms"]}
                          for p in parts]}
    with session_scope(get_engine()) as session:
        stored = get_run(session, LoadtestRow, run_id)
        if stored is not None and stored.status == "done" and stored.result:
            return dict(stored.result)
        save_loadtest(session, run_id, status="done", request=dict(request or {}),
                      result=result, finished_at=_now())
    return result


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


__all__ = ["fetch_chunk", "merge", "abort", "loadtest_part", "loadtest_merge", "process_id"]
