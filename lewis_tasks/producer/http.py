"""Submitting HTTP batches and load tests: checked against the caps, then sent as chords
(a batch of one chunk as one task that closes the batch itself).

A request that cannot be fetched (malformed URL, unsupported scheme) is that URL's error
and the batch goes on; a request that cannot be run at all (too many URLs, a load test over
a ``loadtest.*`` cap, a target outside the scope) is an InvalidInput before anything is
enqueued; a broker that cannot be reached is a BrokerUnavailable.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from ..domain.httpjobs import (
    HttpBatchProgress,
    HttpBatchSummary,
    LoadtestProgress,
    LoadtestResult,
    LoadtestRun,
)
from ..domain.httprequest import HttpRequest, normalise_url
from ..domain.redact import redact_headers, redact_url
from ..domain.scope import Scope, is_localhost_alias, parse_ip
from ..errors import InvalidInput, LewisError
from ..infra.config import Settings, get_settings
from ..infra.messages import signature
from ..infra.planning import (
    batch_plan,
    check_batch_size,
    check_loadtest,
    loadtest_budget,
    split,
)
from ..infra.progress import LOADTEST_PROGRESS_KEY
from .base import (
    FALLBACK_POLL,
    _app,
    _require_broker,
    await_result,
    broker_url,
    publishing,
    send_one,
)
from .handle import JobHandle, P, R, WaitTimeout, unwrap_failure

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

PLAN_KEY = "lewis:http:{batch_id}:plan"  # a batch's size and chunking, for a cancel by id
LOADTEST_KEY = "lewis:loadtest:{run}:submitted"  # a load test's parts, for a cancel by id
WAIT_MARGIN = 15.0  # s beyond the work's own limits: queueing, the merge, the result's return


@dataclass
class _ChordHandle(JobHandle[P, R]):
    """What both handles share: the chord's callback result and its parts' task ids."""

    id: str
    task_id: str
    part_ids: list[str]
    app: Celery | None  # None: sent without Celery's app (one task), built when needed
    one_task: bool = field(default=False, kw_only=True)  # sent by send_one: no Celery to wait

    @property
    def async_result(self) -> AsyncResult:
        from celery.result import AsyncResult

        return AsyncResult(self.task_id, app=self.celery_app())

    def ready(self) -> bool:
        return bool(self.async_result.ready())

    def _merged(self, timeout: float | None, interval: float) -> dict[str, Any]:
        """The merged result, by push; WaitTimeout past ``timeout``, a failure unwrapped."""
        if self.one_task:
            return dict(self.await_task(self.task_id, timeout, interval))
        from celery.exceptions import ChordError
        from celery.exceptions import TimeoutError as ResultTimeout

        try:
            return dict(await_result(self.async_result, timeout, interval=interval))
        except ResultTimeout:
            raise self.timed_out(timeout) from None
        except ChordError as exc:
            raise unwrap_failure(self.celery_app(), exc, self.part_ids) from None


@dataclass
class HttpBatchHandle(_ChordHandle[HttpBatchProgress, HttpBatchSummary]):
    """A submitted batch: ``wait()`` for its summary, ``progress()`` while it runs,
    ``result()`` for its per-URL rows (from the database)."""

    total: int = 0
    chunks: int = 0
    worst_case: float | None = None
    _rows: list[dict[str, Any]] | None = field(default=None, repr=False, compare=False)
    what: ClassVar[str] = "HTTP batch"

    def progress(self) -> HttpBatchProgress:
        """total, done, ok, failed and status, as persisted so far."""
        from ..infra.database import get_engine
        from ..storage.db import session_scope
        from ..storage.http import get_http_batch

        with session_scope(get_engine()) as session:
            batch = get_http_batch(session, self.id)
            if batch is None:  # no chunk has started yet
                data = {"total": self.total, "done": 0, "ok": 0, "failed": 0, "status": "pending"}
            else:
                data = {
                    "total": batch.total,
                    "done": batch.done,
                    "ok": batch.ok,
                    "failed": batch.failed,
                    "status": batch.status,
                }
        return HttpBatchProgress.from_dict(data)

    def started(self) -> bool:
        return self.progress().status != "pending"

    def wait(
        self, timeout: float | None = None, interval: float = FALLBACK_POLL
    ) -> HttpBatchSummary:
        """The batch's summary, by push. A batch of one chunk small enough brings its stored
        rows along (:meth:`result` then reads no database). LewisError if it was cancelled
        (its revoked chunks fail the chord)."""
        try:
            summary = self._merged(timeout, interval)
        except Exception as exc:
            # a wait that ran out on a cancelled batch says "cancelled" too
            if (
                isinstance(exc, TimeoutError) and not isinstance(exc, WaitTimeout)
            ) or self.progress().status != "cancelled":
                raise
            raise LewisError(f"HTTP batch {self.id} cancelled") from None
        rows = summary.pop("rows", None)
        if isinstance(rows, list):
            self._rows = rows
        return HttpBatchSummary.from_dict(summary)

    def cancel(self) -> bool:
        """See :func:`cancel_http_batch`."""
        return cancel_http_batch(self.id, app=self.app)

    def result(
        self, *, offset: int = 0, limit: int = 1000, failed_only: bool = False
    ) -> list[dict[str, Any]]:
        """A page of per-URL outcomes in request order (error_class/error set when one failed)."""
        if self._rows is not None:  # every stored row, as the merge read them back
            rows = [r for r in self._rows if r["error_class"]] if failed_only else self._rows
            return [dict(r) for r in rows[offset : offset + limit]]
        from ..infra.database import get_engine
        from ..storage.db import session_scope
        from ..storage.http import result_rows

        with session_scope(get_engine()) as session:
            return result_rows(
                session, self.id, offset=offset, limit=limit, failed_only=failed_only
            )


@dataclass
class LoadtestHandle(_ChordHandle[LoadtestProgress, LoadtestResult]):
    """A submitted load test: ``wait()`` for the merged result, ``progress()`` while it runs."""

    workers: int = 1
    request: dict[str, Any] = field(default_factory=dict)
    worst_case: float | None = None
    what: ClassVar[str] = "load test"
    cancellable: ClassVar[bool] = True

    def progress(self) -> LoadtestProgress:
        """Requests, errors and rate summed over the parts that reported (once a second)."""
        from ..infra.redis_client import get_redis

        url = self.celery_app().conf.broker_url
        raw = get_redis(url).hgetall(LOADTEST_PROGRESS_KEY.format(run=self.id))
        lines = [json.loads(v) for v in raw.values()]
        return LoadtestProgress.from_dict(
            {
                "parts": self.workers,
                "reporting": len(lines),
                "elapsed_s": max((line["elapsed_s"] for line in lines), default=0.0),
                "requests": sum(line["requests"] for line in lines),
                "errors": sum(line["errors"] for line in lines),
                "rps": round(sum(line["rps"] for line in lines), 1),
            }
        )

    def started(self) -> bool:
        return bool(self.progress().reporting)

    def wait(self, timeout: float | None = None, interval: float = FALLBACK_POLL) -> LoadtestResult:
        """The merged result, by push; a failed part's own error (InvalidInput, OutOfScope…)
        re-raised."""
        return LoadtestResult.from_dict(self._merged(timeout, interval))

    def cancel(self) -> bool:
        """See :func:`cancel_loadtest`."""
        return cancel_loadtest(self.id, app=self.app)

    def result(self) -> LoadtestRun | None:
        """The persisted run (status, request, result), or None before it ended."""
        from ..infra.database import get_engine
        from ..storage.db import session_scope
        from ..storage.models import LoadtestRow
        from ..storage.runs import get_run

        with session_scope(get_engine()) as session:
            run = get_run(session, LoadtestRow, self.id)
            if run is None:
                return None
            return LoadtestRun.from_dict(
                {
                    "id": run.id,
                    "status": run.status,
                    "request": run.request,
                    "result": run.result,
                    "finished_at": run.finished_at,
                }
            )


def batch_worst_case(settings: Settings, count: int, timeout: float | None) -> float:
    """How long a batch of ``count`` URLs of ``timeout`` s each may take at worst, queueing,
    the merge and the result's return included (the default wait of ``lewis http``)."""
    return float(math.ceil(batch_plan(settings, count, timeout).worst_case_seconds() + WAIT_MARGIN))


def loadtest_worst_case(settings: Settings, duration: float | None) -> float:
    """How long a load test may take at worst: a part's hard time limit (start barrier, the
    run, its drain and slack) plus a margin for the merge."""
    return float(math.ceil(loadtest_budget(settings).time_limits(duration)[1] + WAIT_MARGIN))


def submit_http_batch(
    requests: Iterable[str | Mapping[str, Any] | HttpRequest],
    *,
    timeout: float | None = None,
    app: Celery | None = None,
) -> HttpBatchHandle:
    """Fetch every request (a URL, or ``{"url", "method", "headers", "body"}``) on the io
    workers, in chunks; ``timeout`` is each URL's budget (default and cap: http.timeout)."""
    url = broker_url(app)
    settings = get_settings()
    items = [_wire(i, item) for i, item in enumerate(requests)]
    check_batch_size(settings, len(items))
    plan = batch_plan(settings, len(items), timeout)
    size = plan.size
    batch_id = uuid.uuid4().hex
    request = {"urls": len(items), "timeout": plan.budget, "chunk_size": size}
    options: dict[str, Any] = {"timeout": plan.budget, "total": len(items), "request": request}
    worst_case = batch_worst_case(settings, len(items), timeout)
    if len(plan.starts) == 1:  # one chunk pays for no fan-out: it closes the batch itself
        return _send_one_chunk(url, batch_id, items, options, app, worst_case)
    app = _app(app)
    header = [
        app.signature(
            "lewis.http.fetch_chunk",
            args=(batch_id, start, items[start : start + size], options),
            task_id=chunk_task_id(batch_id, start),
        )
        for start in plan.starts
    ]
    errback = app.signature("lewis.http.abort", kwargs={"kind": "batch", "run_id": batch_id})
    callback = app.signature("lewis.http.merge", kwargs={"batch_id": batch_id})
    callback.link_error(errback)
    with publishing(app):  # a broker that is down: one BrokerUnavailable, not kombu's own
        _reach_broker(url)
        from celery import chord

        result = chord(header, app=app)(callback)
    _record_plan(batch_id, len(items), request)
    return HttpBatchHandle(
        batch_id,
        result.id,
        [s.id for s in header],
        app,
        total=len(items),
        chunks=len(header),
        worst_case=worst_case,
    )


def _send_one_chunk(
    url: str,
    batch_id: str,
    items: list[Any],
    options: dict[str, Any],
    app: Celery | None,
    worst_case: float,
) -> HttpBatchHandle:
    """The batch as its one chunk task, which closes the batch itself (``lewis.http.abort``
    its errback); sent and waited on without Celery's app."""
    task_id = chunk_task_id(batch_id, 0)
    with publishing(url):
        _reach_broker(url)
        send_one(
            url,
            "lewis.http.fetch_chunk",
            task_id,
            [batch_id, 0, items, {**options, "merge": True}],
            errbacks=[signature("lewis.http.abort", kwargs={"kind": "batch", "run_id": batch_id})],
        )
    _record_plan(batch_id, len(items), options["request"])
    return HttpBatchHandle(
        batch_id,
        task_id,
        [task_id],
        app,
        total=len(items),
        chunks=1,
        worst_case=worst_case,
        one_task=True,
    )


def chunk_task_id(batch_id: str, start: int) -> str:
    """The task id of a batch's chunk from index ``start``: known without asking (a revoke)."""
    return f"{batch_id}-c{start}"


def _record_plan(batch_id: str, total: int, request: Mapping[str, Any]) -> None:
    """What a cancel from any process needs (the chunk ids), kept in Redis for the batch's life."""
    from ..infra.redis_client import get_redis

    get_redis().set(
        PLAN_KEY.format(batch_id=batch_id),
        json.dumps({"total": total, "request": dict(request)}),
        ex=get_settings().broker.result_expires,
    )


def cancel_http_batch(batch_id: str, *, app: Celery | None = None) -> bool:
    """Stop a batch: queued chunks revoked, running ones end their requests within ~0.2 s
    (rows kept; the unfetched ones marked ``cancelled``), status ``cancelled``. False if it had
    ended already; InvalidInput if no such batch is known."""
    from ..infra.cancel import request_cancel
    from ..infra.database import get_engine
    from ..infra.redis_client import get_redis
    from ..storage import http as repo
    from ..storage.db import session_scope

    app = _app(app)
    _require_broker(app)
    with publishing(app):
        raw = get_redis().get(PLAN_KEY.format(batch_id=batch_id))
    with session_scope(get_engine()) as session:
        batch = repo.get_http_batch(session, batch_id)
        if raw is None and batch is None:
            raise InvalidInput(f"HTTP batch {batch_id!r}: no such batch")
        if raw is not None:
            recorded = json.loads(raw)
            total, request = int(recorded["total"]), dict(recorded["request"])
        else:
            assert batch is not None
            total, request = int(batch.total), dict(batch.request or {})
        cancelled = repo.cancel_http_batch(session, batch_id, total=total, request=request)
    if cancelled:
        size = max(1, int(request.get("chunk_size") or total or 1))
        with publishing(app):
            request_cancel(
                get_redis(),
                app,
                batch_id,
                [chunk_task_id(batch_id, s) for s in range(0, total, size)],
                get_settings().broker.result_expires,
            )
    return cancelled


def cancel_loadtest(run_id: str, *, app: Celery | None = None) -> bool:
    """Stop a running load test: every part stops sending within ~0.1 s (requests in flight
    are cut), and the merged result covers the time it ran, status ``cancelled``. False if it
    had ended already; InvalidInput if no such load test is known."""
    from ..infra.cancel import request_cancel
    from ..infra.redis_client import get_redis

    app = _app(app)
    _require_broker(app)
    with publishing(app):
        known = get_redis().get(LOADTEST_KEY.format(run=run_id))
    run = LoadtestHandle(run_id, "", [], app).result()
    if known is None and run is None:
        raise InvalidInput(f"load test {run_id!r}: no such load test")
    if run is not None:  # merged and stored: it has ended
        return False
    settings = get_settings()
    with publishing(app):  # parts are not revoked: each returns what it measured, for the merge
        return request_cancel(
            get_redis(), app, run_id, (), int(loadtest_budget(settings).time_limits(None)[1]) + 60
        )


def submit_loadtest(
    url: str,
    *,
    concurrency: int,
    duration: float | None = None,
    requests: int | None = None,
    rate: float | None = None,
    workers: int = 1,
    method: str = "GET",
    headers: Any = None,
    body: str | bytes | None = None,
    timeout: float | None = None,
    ramp: float | None = None,
    start_within: float | None = None,
    app: Celery | None = None,
) -> LoadtestHandle:
    """Load ``url`` from ``workers`` io processes at once: ``concurrency``, ``requests`` and
    ``rate`` are totals, split between them; ``duration`` in seconds. Closed loop without
    ``rate``, open loop (latency from the intended send time) with it.

    ``headers`` (a mapping or ``[(name, value), …]``) and ``body`` (text or UTF-8 bytes) go
    with every request, ``timeout`` cuts each one, ``ramp`` seconds raise the load linearly
    to its target. They travel in the task's JSON; the stored parameters keep the body's size
    only and mask credential headers (Authorization, Cookie…).

    Parts not started within ``start_within`` seconds (default ``loadtest.barrier_timeout``)
    expire unrun — a load test that waited in a busy queue must not hit its target later,
    when nobody is watching any more — and the run is recorded as failed, saying so."""
    app = _app(app)
    _require_broker(app)
    settings = get_settings()
    method = str(method).upper()
    pairs = _header_pairs(headers)
    text = _body_text(body)
    check_loadtest(
        settings,
        concurrency=concurrency,
        duration=duration,
        requests=requests,
        rate=rate,
        workers=workers,
        method=method,
        headers=pairs,
        body=text,
        timeout=timeout,
        ramp=ramp,
    )
    target = str(normalise_url(url))
    _check_scope(settings, target)
    run_id = uuid.uuid4().hex
    request = {
        "url": redact_url(target),
        "method": method,
        "concurrency": concurrency,
        "duration": duration,
        "requests": requests,
        "rate": rate,
        "workers": workers,
        "headers": redact_headers(pairs or ()),
        "body_bytes": None if text is None else len(text.encode()),
        "timeout": timeout,
        "ramp": ramp,
    }
    soft, hard = loadtest_budget(settings).time_limits(duration)
    if start_within is None:
        start_within = settings.loadtest.barrier_timeout
    if not (math.isfinite(start_within) and start_within > 0):
        raise InvalidInput(f"start_within must be a number of seconds > 0, not {start_within!r}")
    expires = datetime.now(UTC) + timedelta(seconds=start_within)
    shares = split(concurrency, workers)
    counts = split(requests, workers) if requests is not None else [None] * workers
    header = []
    for part in range(workers):
        spec = {
            "url": target,
            "method": method,
            "concurrency": shares[part],
            "duration": duration,
            "requests": counts[part],
            "rate": None if rate is None else rate / workers,
            "headers": pairs,
            "body": text,
            "timeout": timeout,
            "ramp": ramp,
        }
        # what Flower and `celery inspect` show of the arguments: the secrets masked
        shown = {**spec, "headers": request["headers"], "body": request["body_bytes"]}
        header.append(
            app.signature(
                "lewis.http.loadtest_part",
                args=(run_id, part, workers, spec),
                task_id=uuid.uuid4().hex,
                soft_time_limit=soft,
                time_limit=hard,
                expires=expires,
                argsrepr=repr((run_id, part, workers, shown)),
            )
        )
    callback = app.signature(
        "lewis.http.loadtest_merge", kwargs={"run_id": run_id, "request": request}
    )
    callback.link_error(
        app.signature("lewis.http.abort", kwargs={"kind": "loadtest", "run_id": run_id})
    )
    with publishing(app):
        _reach_broker(str(app.conf.broker_url))
        from ..infra.redis_client import get_redis

        get_redis().set(LOADTEST_KEY.format(run=run_id), workers, ex=int(hard) + 60)
        from celery import chord

        result = chord(header, app=app)(callback)
    return LoadtestHandle(
        run_id,
        result.id,
        [s.id for s in header],
        app,
        workers=workers,
        request=request,
        worst_case=loadtest_worst_case(settings, duration),
    )


def _header_pairs(headers: Any) -> list[list[str]] | None:
    """``[[name, value], …]`` (JSON) from a mapping or pairs; checked with the run."""
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    try:
        return [[str(name), str(value)] for name, value in items]
    except (TypeError, ValueError):
        raise InvalidInput("headers must be a mapping or (name, value) pairs") from None


def _body_text(body: str | bytes | None) -> str | None:
    if isinstance(body, bytes | bytearray):
        try:
            return bytes(body).decode()
        except UnicodeDecodeError:
            raise InvalidInput("the body is not UTF-8 text") from None
    return body


def _reach_broker(url: str) -> None:
    """One PING first: a chord subscribes to its result before it publishes, and Celery's
    result backend retries a dead Redis for ~20 s, then gives up with a RuntimeError."""
    from ..infra.redis_client import get_redis

    get_redis(url).ping()


def _wire(index: int, item: Any) -> Any:
    """A request as JSON for the message; bad URLs pass through to become per-URL errors."""
    if isinstance(item, str):
        return item
    if isinstance(item, HttpRequest):
        item = {
            "url": item.url,
            "method": item.method,
            "headers": dict(item.headers),
            "body": item.body,
        }
    if isinstance(item, Mapping):
        wired = dict(item)
        body = wired.get("body")
        if isinstance(body, bytes | bytearray):
            try:
                wired["body"] = bytes(body).decode()
            except UnicodeDecodeError:
                raise InvalidInput(f"request {index}: the body is not UTF-8 text") from None
        if wired.get("headers") is not None and isinstance(wired["headers"], Mapping):
            wired["headers"] = {str(k): str(v) for k, v in wired["headers"].items()}
        try:
            json.dumps(wired)
        except (TypeError, ValueError):
            raise InvalidInput(
                f"request {index} is not plain data (URL, method, headers, body as text)"
            ) from None
        return wired
    return str(item)


def _check_scope(settings: Settings, url: str) -> None:
    """OutOfScope now for a target whose address is plain to see (an IP literal or a
    localhost alias); names are checked at connect time by the worker's session anyway."""
    from yarl import URL

    host = URL(url).raw_host or ""
    scope = Scope.from_allow(settings.scope.allow)
    if parse_ip(host) is not None:
        scope.check_address(host)
    elif is_localhost_alias(host):
        for addr in ("127.0.0.1", "::1"):
            scope.check_address(addr, via="localhost")


__all__ = [
    "submit_http_batch",
    "submit_loadtest",
    "HttpBatchHandle",
    "LoadtestHandle",
    "batch_worst_case",
    "loadtest_worst_case",
    "cancel_http_batch",
    "cancel_loadtest",
]
