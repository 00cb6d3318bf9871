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

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..domain.httpclient import create_session
from ..domain.jobsums import chunk_figures, sum_chunks, sum_parts
from ..domain.loadgen import STOP_INTERVAL, LoadResult, run_loadtest
from ..domain.scope import Scope
from ..errors import InvalidInput
from ..infra.barrier import RedisBarrier
from ..infra.batchfetch import BatchRows, fetch_and_store, save_batch_once
from ..infra.cancel import CancelCheck
from ..infra.celery_app import app
from ..infra.config import get_settings
from ..infra.loadparts import BARRIER_KEY, claim_process
from ..infra.planning import (
    BARRIER_LEAD,
    batch_plan,
    check_batch_size,
    check_loadtest,
    loadtest_budget,
)
from ..infra.progress import LOADTEST_PROGRESS_KEY, ProgressWriter
from ..infra.runtime import runtime
from ..infra.task import LewisTask, stored_failure

log = logging.getLogger(__name__)

# what the row-writer process (http.row_writer, infra/rowwriter.py) stores a chunk's rows with
ROW_WRITER_ROWS = "lewis_tasks.storage.http:http_rows"
ROWS_IN_RESULT = 100  # a one-chunk batch this small returns its rows: the CLI reads no database
FINAL_LINE_WAIT = 2.0  # seconds a part waits for its last progress line to be written


def process_id() -> str:
    """This worker process, as ``host:pid`` (prefork children and thread workers alike)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --- batches ---------------------------------------------------------------------------------


@app.task(name="lewis.http.fetch_chunk")
def fetch_chunk(
    batch_id: str, start: int, requests: list[Any], options: dict[str, Any]
) -> dict[str, Any]:
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
    rt = runtime()
    rows = _batch_rows()
    save_batch_once(rt, rows, batch_id, total, options.get("request"))
    fetched = fetch_and_store(
        rt,
        rt.row_writer(settings.database, ROW_WRITER_ROWS) if settings.http.row_writer else rows,
        batch_id,
        start,
        requests,
        budget,
        deadline=began + plan.chunk_seconds,
    )
    figures = chunk_figures(fetched.outcomes)
    result = {
        "batch_id": batch_id,
        "start": start,
        "count": figures.pop("count"),
        "new": fetched.new,
        **figures,
        "process": process_id(),
        "seconds": round(time.monotonic() - began, 3),
    }
    if options.get("merge"):  # the batch's only chunk: no chord, it closes the batch itself
        return _merge_batch([result], batch_id, rows_up_to=ROWS_IN_RESULT)
    return result


def _batch_rows() -> BatchRows:
    """The batch's rows in this process's database, a session per write."""
    from ..infra.database import get_engine
    from ..storage.db import session_scope
    from ..storage.http import HttpRows

    return HttpRows(lambda: session_scope(get_engine()))


@app.task(name="lewis.http.merge")
def merge(results: list[dict[str, Any]], batch_id: str) -> dict[str, Any]:
    """Chord callback: the chunks' counts and latencies summed, the batch closed. Idempotent."""
    return _merge_batch(results, batch_id)


def _merge_batch(results: Any, batch_id: Any, rows_up_to: int = 0) -> dict[str, Any]:
    """The chunks summed and the batch closed; a batch of at most ``rows_up_to`` URLs also
    returns its stored rows (read back, so a redelivery returns what the first one stored)."""
    from ..infra.database import get_engine
    from ..storage.db import session_scope
    from ..storage.http import finish_http_batch, get_http_batch, result_rows

    _check_batch_id(batch_id)
    if not isinstance(results, list) or not all(isinstance(r, Mapping) for r in results):
        raise InvalidInput("merge needs the list of chunk results")
    sums = sum_chunks(results)
    with session_scope(get_engine()) as session:
        batch = get_http_batch(session, batch_id)
        if batch is None:
            raise InvalidInput(f"no HTTP batch {batch_id!r}")
        summary = {
            "total": batch.total,
            "done": batch.done,
            "ok": batch.ok,
            "failed": batch.failed,
            **sums,
        }
        finish_http_batch(
            session,
            batch_id,
            summary=summary,
            status="cancelled" if batch.status == "cancelled" else "done",
        )
        rows = (
            result_rows(session, batch_id, limit=rows_up_to)
            if 0 < batch.total <= rows_up_to
            else None
        )
    return {"batch_id": batch_id, **summary, **({"rows": rows} if rows is not None else {})}


@app.task(name="lewis.http.abort")
def abort(failed_task_id: str, kind: str, run_id: str) -> dict[str, Any]:
    """Errback of a failed batch or load test chord: record the run as failed, with why."""
    from ..infra.database import get_engine
    from ..storage.db import session_scope
    from ..storage.http import finish_http_batch
    from ..storage.runs import save_loadtest

    reason = _failure_of(failed_task_id)
    with session_scope(get_engine()) as session:
        if kind == "batch" and _is_cancelled_batch(session, run_id):
            pass  # its revoked chunks fail the chord: it stays cancelled
        elif kind == "batch":
            finish_http_batch(session, run_id, status="failed", summary={"error": reason})
        elif kind == "loadtest":
            save_loadtest(
                session, run_id, status="failed", result={"error": reason}, finished_at=_now()
            )
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
def loadtest_part(
    self: LoadtestPartTask, run_id: str, part: int, parts: int, spec: dict[str, Any]
) -> dict[str, Any]:
    """One part of load test ``run_id``: wait for the other parts, then load the URL.

    Parts belong on different io processes: a part that arrives in a process already running
    another part of the run is handed back to the queue (at most ``2 × parts`` times), so an
    idle process takes it; past that it runs here, sharing the loop, and says so.
    """
    _check_part(run_id, part, parts, spec)
    settings = get_settings()
    budget = loadtest_budget(settings)
    check_loadtest(
        settings,
        concurrency=spec["concurrency"],
        duration=spec.get("duration"),
        requests=spec.get("requests"),
        rate=spec.get("rate"),
        workers=1,
        method=str(spec.get("method", "GET")),
        headers=spec.get("headers"),
        body=spec.get("body"),
        timeout=spec.get("timeout"),
        ramp=spec.get("ramp"),
    )
    rt = runtime()
    client = rt.redis()
    ttl = int(budget.time_limits(None)[1]) + 60
    shared = False
    if parts > 1 and not claim_process(client, run_id, process_id(), part, ttl):
        # this process runs another part of the run already: hand it back, a few times
        if (self.request.retries or 0) < 2 * parts:
            raise self.retry(countdown=0, max_retries=2 * parts)
        shared = True
    barrier = RedisBarrier(
        client,
        BARRIER_KEY.format(run=run_id),
        parties=parts,
        timeout=budget.barrier,
        lead=BARRIER_LEAD,
    )
    start_at = barrier.wait(party=f"{self.request.id or run_id}:{part}")
    progress = ProgressWriter(
        client, LOADTEST_PROGRESS_KEY.format(run=run_id), str(part), ttl, rt.scan.publisher
    )
    run_for = spec.get("duration")
    stop = CancelCheck(client, run_id, interval=STOP_INTERVAL)  # a cancel ends it within ~0.1 s
    result = rt.run(
        _load(spec, start_at, budget.max_duration, progress.publish, stop),
        timeout=budget.time_limits(run_for)[0],
    )
    progress.publish(
        {
            "elapsed_s": round(result.duration_s, 3),
            "requests": result.requests,
            "errors": sum(result.errors.values()),
            "rps": round(result.rps, 1),
            "done": True,
        }
    )
    progress.flush(FINAL_LINE_WAIT)
    return {
        **result.to_dict(),
        "part": part,
        "process": process_id(),
        "shared": shared,
        "handed_back": self.request.retries or 0,
    }


async def _load(
    spec: Mapping[str, Any],
    start_at: float,
    max_duration: float,
    report: Callable[[dict[str, Any]], None],
    stop: Callable[[], bool],
) -> LoadResult:
    """The run on this process's loop, with a session of its own sized to the part's
    concurrency: the shared session's per-host limit would throttle it, and a load test
    must not starve the batches sharing that pool."""
    settings = get_settings()
    lt = settings.loadtest
    session = create_session(
        Scope.from_allow(settings.scope.allow),
        max_connections=int(spec["concurrency"]),
        limit_per_host=0,
        connect_timeout=settings.network.connection_timeout,
        read_timeout=None,
        keep_alive=settings.network.keep_alive,
    )
    async with session:
        return await run_loadtest(
            session,
            str(spec["url"]),
            concurrency=int(spec["concurrency"]),
            duration=spec.get("duration"),
            requests=spec.get("requests"),
            rate=spec.get("rate"),
            method=str(spec.get("method", "GET")),
            headers=spec.get("headers"),
            body=spec.get("body"),
            timeout=spec.get("timeout"),
            ramp=spec.get("ramp"),
            max_body=lt.max_body_bytes,
            start_at=start_at,
            max_duration=max_duration,
            max_concurrency=lt.max_concurrency,
            max_rate=lt.max_rate,
            max_requests=lt.max_requests,
            on_progress=report,
            stop=stop,
        )


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
def loadtest_merge(
    results: list[dict[str, Any]], run_id: str, request: dict[str, Any]
) -> dict[str, Any]:
    """Chord callback: the parts as one result (histograms merged bucket by bucket, never
    percentiles averaged), persisted once; a second run returns the stored result."""
    from ..infra.database import get_engine
    from ..storage.db import session_scope
    from ..storage.models import LoadtestRow
    from ..storage.runs import get_run, save_loadtest

    if not isinstance(results, list) or not results:
        raise InvalidInput("loadtest_merge needs the list of part results")
    result = sum_parts(results, run_id)
    with session_scope(get_engine()) as session:
        stored = get_run(session, LoadtestRow, run_id)
        if stored is not None and stored.status in ("done", "cancelled") and stored.result:
            return dict(stored.result)
        save_loadtest(
            session,
            run_id,
            status="cancelled" if result["cancelled"] else "done",
            request=dict(request or {}),
            result=result,
            finished_at=_now(),
        )
    return result


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


__all__ = ["fetch_chunk", "merge", "abort", "loadtest_part", "loadtest_merge", "process_id"]
