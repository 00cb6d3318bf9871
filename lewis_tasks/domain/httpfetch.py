"""Fetch a batch of URLs at once: status, redirect chain, timings, body hash — or why not.

``fetch_all`` runs a fixed pool of ``concurrency`` coroutines over the batch on a session
from :func:`~lewis_tasks.domain.httpclient.create_session`. Redirects are followed here,
one hop at a time, so the session's scope guard checks every hop's addresses. Each URL has
one time budget covering its hops and retries; a URL that fails becomes an ``HttpOutcome``
with an error class, and the batch goes on. Outcomes show URLs with their credentials masked
(:func:`~.redact.redact_url`): they are stored and printed.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import aiohttp
import orjson
from multidict import istr

from ..errors import InvalidInput
from . import httpclient as hc
from .httplane import LeanResponse
from .httprequest import METHODS, HttpRequest, normalise_url, resolve_location
from .redact import redact_url

IDEMPOTENT = frozenset({"GET", "HEAD"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
SELECTED_HEADERS = (
    "server",
    "content-type",
    "content-length",
    "content-encoding",
    "location",
    "last-modified",
    "etag",
    "cache-control",
    "x-powered-by",
    "strict-transport-security",
    "content-security-policy",
    "www-authenticate",
)
_MAX_HEADER_VALUE = 1024
# (name, case-insensitive key): lookups by istr skip case-folding the name on every response
_SELECTED_KEYS = tuple((name, istr(name)) for name in SELECTED_HEADERS)
_CONTENT_ENCODING = istr("Content-Encoding")
_DROP_CROSS_ORIGIN = frozenset({"authorization", "cookie", "proxy-authorization"})
MAX_URL_LENGTH = 8192  # characters; the default of http.max_url_length


# The result types are NamedTuples, not frozen dataclasses: a batch builds one per URL on the
# event loop, and a frozen dataclass costs ~4× as much to construct (setattr per field).


class RedirectHop(NamedTuple):
    url: str
    status: int
    location: str

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "location": self.location}


class Timings(NamedTuple):
    """Milliseconds; dns/connect/ttfb of the last hop (dns and connect None when a pooled
    connection was reused; ttfb from the connection being ready to the response headers, so
    the three add up), total for the whole URL including redirects and retries."""

    dns_ms: float | None = None
    connect_ms: float | None = None
    ttfb_ms: float | None = None
    total_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dns_ms": self.dns_ms,
            "connect_ms": self.connect_ms,
            "ttfb_ms": self.ttfb_ms,
            "total_ms": self.total_ms,
        }


class HttpOutcome(NamedTuple):
    """What one URL of a batch gave: an answer (``status``) or an ``error`` class and message."""

    index: int  # type: ignore[assignment]  # the position in the batch; hides tuple.index()
    url: str
    method: str
    final_url: str | None = None
    status: int | None = None
    redirects: tuple[RedirectHop, ...] = ()
    timings: Timings = Timings()
    bytes: int = 0
    sha256: str | None = None
    truncated: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    error: str | None = None
    message: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "url": self.url,
            "method": self.method,
            "final_url": self.final_url,
            "status": self.status,
            "redirects": [hop.to_dict() for hop in self.redirects],
            "timings": self.timings.to_dict(),
            "bytes": self.bytes,
            "sha256": self.sha256,
            "truncated": self.truncated,
            "headers": dict(self.headers),
            "error": self.error,
            "message": self.message,
            "attempts": self.attempts,
        }


class _Failed(Exception):
    """A hop's failure with its class already decided (too many redirects, bad Location)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error, self.message = error, message


async def fetch_all(
    session: aiohttp.ClientSession,
    requests: Iterable[str | Mapping[str, Any] | HttpRequest],
    *,
    concurrency: int,
    max_body_bytes: int,
    max_redirects: int,
    retries: int,
    total_timeout: float,
    on_result: Callable[[HttpOutcome], None] | None = None,
    backoff: float = 0.1,
    max_url_length: int = MAX_URL_LENGTH,
) -> list[HttpOutcome]:
    """One HttpOutcome per request, in order; at most ``concurrency`` in flight.

    ``total_timeout`` bounds each URL (hops and retries included); ``on_result`` is called
    as each URL finishes, for progress. A one-off :class:`FetchPool`.
    """
    pool = FetchPool(
        session,
        concurrency=concurrency,
        max_body_bytes=max_body_bytes,
        max_redirects=max_redirects,
        retries=retries,
        backoff=backoff,
        max_url_length=max_url_length,
    )
    return await pool.fetch(requests, total_timeout=total_timeout, on_result=on_result)


class FetchPool:
    """``concurrency`` fetchers on one session, shared by every batch handed to :meth:`fetch`.

    Batches given at the same time queue in arrival order, so the first finishes first, and
    at most ``concurrency`` requests are ever in flight: several batches (a worker process's
    chunks) never queue inside the connector for its connections, which costs a future and a
    wake-up per request. Fetchers start with work and end when the queue is empty.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        concurrency: int,
        max_body_bytes: int,
        max_redirects: int,
        retries: int,
        backoff: float = 0.1,
        max_url_length: int = MAX_URL_LENGTH,
    ) -> None:
        for name, value, low in (
            ("concurrency", concurrency, 1),
            ("max_body_bytes", max_body_bytes, 0),
            ("max_redirects", max_redirects, 0),
            ("retries", retries, 0),
            ("max_url_length", max_url_length, 1),
        ):
            if value < low:
                raise InvalidInput(f"{name} must be ≥ {low}, not {value}")
        self.session = session
        self.concurrency = concurrency
        self._options = (max_body_bytes, max_redirects, retries, backoff, max_url_length)
        self._queue: deque[tuple[_Job, int]] = deque()
        self._fetchers = 0
        self._running: set[asyncio.Task[None]] = set()
        self._slots = itertools.count()  # a watchdog key per fetcher ever started
        self._watchdog = _Watchdog()

    @property
    def queued(self) -> int:
        """Requests waiting for a fetcher."""
        return len(self._queue)

    async def fetch(
        self,
        requests: Iterable[str | Mapping[str, Any] | HttpRequest],
        *,
        total_timeout: float,
        on_result: Callable[[HttpOutcome], None] | None = None,
    ) -> list[HttpOutcome]:
        """One HttpOutcome per request, in order, each URL within ``total_timeout`` seconds of
        its start. Cancelling this call drops its queued requests and ends its in-flight ones."""
        if total_timeout <= 0:
            raise InvalidInput(f"total_timeout must be > 0, not {total_timeout}")
        items = list(requests)
        if not items:
            return []
        job = _Job(items, total_timeout, on_result, asyncio.get_running_loop().create_future())
        self._queue.extend((job, i) for i in range(len(items)))
        self._watchdog.start(total_timeout)
        for _ in range(min(self.concurrency - self._fetchers, len(items))):
            self._fetchers += 1
            fetcher = asyncio.create_task(self._fetcher(next(self._slots)))
            self._running.add(fetcher)  # the loop holds tasks weakly: keep them alive
            fetcher.add_done_callback(self._running.discard)
        try:
            return await job.done
        finally:
            if not job.done.done() or job.done.cancelled():
                job.cancel(self._watchdog)

    async def _fetcher(self, slot: int) -> None:
        max_body, max_redirects, retries, backoff, max_url = self._options
        me = asyncio.current_task()
        assert me is not None
        try:
            while self._queue:
                job, i = self._queue.popleft()
                if job.done.done():  # cancelled, or on_result failed: skip what is left
                    continue
                job.running.add(slot)
                try:
                    outcome = await _fetch_one(
                        self.session,
                        me,
                        slot,
                        i,
                        job.items[i],
                        max_body,
                        max_redirects,
                        retries,
                        self._watchdog,
                        job.budget,
                        backoff,
                        max_url,
                    )
                finally:
                    job.running.discard(slot)
                job.finish(i, outcome)
        finally:
            self._fetchers -= 1
            if not self._fetchers:
                self._watchdog.stop()


class _Job:
    """One :meth:`FetchPool.fetch` call: its requests, their outcomes and its future."""

    __slots__ = ("items", "budget", "on_result", "done", "results", "left", "running")

    def __init__(
        self,
        items: list[Any],
        budget: float,
        on_result: Callable[[HttpOutcome], None] | None,
        done: asyncio.Future[list[HttpOutcome]],
    ) -> None:
        self.items, self.budget, self.on_result, self.done = items, budget, on_result, done
        self.results: list[HttpOutcome | None] = [None] * len(items)
        self.left = len(items)
        self.running: set[int] = set()  # fetcher slots working on this job now

    def finish(self, index: int, outcome: HttpOutcome) -> None:
        if self.done.done():
            return
        self.results[index] = outcome
        self.left -= 1
        if self.on_result is not None:
            try:
                self.on_result(outcome)
            except BaseException as exc:  # the caller gets that error itself
                self.done.set_exception(exc)
                return
        if not self.left:
            self.done.set_result(self.results)  # type: ignore[arg-type]

    def cancel(self, watchdog: _Watchdog) -> None:
        """End this job's in-flight requests now (their fetchers move on); queued ones are
        skipped when reached."""
        if not self.done.done():
            self.done.cancel()
        for slot in list(self.running):
            watchdog.expire(slot)


class _Watchdog:
    """Ends a URL's work when its budget is spent, by cancelling the fetcher working on it.

    One sweep per tick over the URLs in flight replaces a timer (or an ``asyncio.timeout``)
    per URL, which cost ~15 % of a small request's CPU. The fetcher tells its own cancel from
    anyone else's by the slot's flag. A URL overruns its budget by at most one tick
    (≤ 0.1 s). The sweep runs only while a pool has fetchers.
    """

    def __init__(self) -> None:
        self.tick = 0.1
        self.in_flight: dict[int, tuple[float, asyncio.Task[Any]]] = {}  # slot → (deadline, task)
        self.fired: set[int] = set()  # slots whose URL this watchdog ended
        self._task: asyncio.Task[None] | None = None

    def start(self, budget: float) -> None:
        self.tick = min(self.tick if self._task else 0.1, max(0.005, budget / 10))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def arm(self, slot: int, deadline: float, task: asyncio.Task[Any]) -> None:
        self.in_flight[slot] = (deadline, task)

    def disarm(self, slot: int) -> bool:
        """Forget the slot's URL; whether this watchdog cancelled it."""
        self.in_flight.pop(slot, None)
        if slot in self.fired:
            self.fired.discard(slot)
            return True
        return False

    def expire(self, slot: int) -> None:
        entry = self.in_flight.pop(slot, None)
        if entry is not None:
            self.fired.add(slot)
            entry[1].cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            now = time.perf_counter()
            for slot in [s for s, (deadline, _) in self.in_flight.items() if deadline <= now]:
                self.expire(slot)


async def _fetch_one(
    session: aiohttp.ClientSession,
    task: asyncio.Task[Any],
    slot: int,
    index: int,
    item: Any,
    max_body: int,
    max_redirects: int,
    retries: int,
    watchdog: _Watchdog,
    budget: float,
    backoff: float,
    max_url: int,
) -> HttpOutcome:
    started = time.perf_counter()
    try:
        _check_length(_url_of(item), max_url)
        request = HttpRequest.parse(item)
    except InvalidInput as exc:
        url = _url_of(item)
        try:  # was it the URL, or the rest of the request?
            _check_length(url, max_url)
            normalise_url(url)
            error = hc.INVALID_REQUEST
        except InvalidInput:
            error = hc.INVALID_URL
        method = str(item.get("method") or "GET") if isinstance(item, Mapping) else "GET"
        shown = url if len(url) <= max_url else url[:max_url] + "…"
        return HttpOutcome(
            index, redact_url(shown), method, error=error, message=redact_url(str(exc)), attempts=0
        )
    attempt = 0
    hops: list[RedirectHop] = []  # of the current attempt, kept when it fails
    watchdog.arm(slot, started + budget, task)
    try:
        while True:
            attempt += 1
            hops = []
            try:
                outcome = await _follow(
                    session,
                    index,
                    request,
                    max_body,
                    max_redirects,
                    max_url,
                    started,
                    attempt,
                    hops,
                )
                if watchdog.disarm(slot):  # ended in the same step as the sweep fired
                    task.uncancel()
                return outcome
            except _Failed:
                raise
            except Exception as exc:
                error, message = hc.classify_error(exc)
                if (
                    error not in hc.TRANSIENT
                    or request.method not in IDEMPOTENT
                    or attempt > retries
                ):
                    raise _Failed(error, message) from exc
                pause = backoff * 2 ** (attempt - 1) * (0.5 + random.random() / 2)
                await asyncio.sleep(pause)
    except _Failed as failed:
        watchdog.disarm(slot)
        error, message = failed.error, failed.message
    except asyncio.CancelledError:
        if not watchdog.disarm(slot) or task.uncancel() > 0:
            raise  # not (only) the watchdog: the fetcher itself is being stopped
        error, message = hc.TIMEOUT, f"no complete answer within {budget:g} s"
    total = _ms(time.perf_counter() - started)
    return HttpOutcome(
        index,
        redact_url(request.url),
        request.method,
        redirects=tuple(hops),
        timings=Timings(total_ms=total),
        error=error,
        message=redact_url(message),
        attempts=attempt,
    )


def _check_length(url: str, cap: int) -> None:
    if len(url) > cap:
        raise InvalidInput(f"the URL is {len(url):,} characters long, over the cap of {cap:,}")


async def _follow(
    session: aiohttp.ClientSession,
    index: int,
    request: HttpRequest,
    max_body: int,
    max_redirects: int,
    max_url: int,
    started: float,
    attempt: int,
    hops: list[RedirectHop],
) -> HttpOutcome:
    url, method, body = normalise_url(request.url), request.method, request.body
    headers = dict(request.headers) if request.headers else None
    lane = getattr(session.connector, "lane", None)
    while True:
        marks = hc.HopTimings()
        token = marks.active()
        sent = time.perf_counter()
        resp: aiohttp.ClientResponse | LeanResponse
        try:
            if lane is not None and lane.serves(url, method, body):
                resp = await lane.request(method, url, headers, marks)
            else:
                resp = await session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                )
        finally:
            hc.stop_timing(token)
        async with resp:
            ttfb = time.perf_counter() - sent
            location = resp.headers.get("Location")
            if resp.status in REDIRECTS and location:
                hops.append(
                    RedirectHop(redact_url(str(url)), resp.status, redact_url(location[:max_url]))
                )
                if len(hops) > max_redirects:
                    raise _Failed(hc.TOO_MANY_REDIRECTS, f"more than {max_redirects} redirects")
                try:
                    _check_length(location, max_url)
                    target = resolve_location(url, location)
                    _check_length(str(target), max_url)
                except (InvalidInput, ValueError) as exc:
                    raise _Failed(
                        hc.INVALID_URL, f"redirect to {location[:200]!r}: {exc}"
                    ) from None
                if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                    method = "GET" if method != "HEAD" else "HEAD"
                    body = None
                if headers and target.origin() != url.origin():
                    headers = {
                        k: v for k, v in headers.items() if k.lower() not in _DROP_CROSS_ORIGIN
                    }
                url = target
                continue
            size, digest, truncated = await _read_capped(resp, max_body)
            got = resp.headers
            selected = []
            for name, key in _SELECTED_KEYS:
                value = got.get(key)
                if value is not None:
                    selected.append((name, value[:_MAX_HEADER_VALUE]))
            ttfb -= (marks.dns or 0.0) + (marks.connect or 0.0)  # phases of their own
            timings = Timings(
                _ms_if(marks.dns),
                _ms_if(marks.connect),
                _ms(max(0.0, ttfb)),
                _ms(time.perf_counter() - started),
            )
            final = redact_url(str(url) if hops else request.url)
            return HttpOutcome(
                index,
                redact_url(request.url),
                request.method,
                final,
                resp.status,
                tuple(hops),
                timings,
                size,
                digest,
                truncated,
                tuple(selected),
                attempts=attempt,
            )


async def _read_capped(
    resp: aiohttp.ClientResponse | LeanResponse, cap: int
) -> tuple[int, str, bool]:
    """Bytes read, SHA-256 of them, and whether the body went on past ``cap`` (then unread)."""
    length = resp.content_length
    if length is not None and length <= cap and _CONTENT_ENCODING not in resp.headers:
        # The common case, in one read: a declared length within the cap, not compressed
        # (a compressed body may inflate past its Content-Length, so it takes the loop).
        body = await resp.read()
        return len(body), hashlib.sha256(body).hexdigest(), False
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            return size, digest.hexdigest(), False
        room = cap - size
        if len(chunk) > room:
            digest.update(memoryview(chunk)[:room])
            return cap, digest.hexdigest(), True
        digest.update(chunk)
        size += len(chunk)


def _url_of(item: Any) -> str:
    if isinstance(item, HttpRequest):
        return item.url
    if isinstance(item, Mapping):
        return str(item.get("url", ""))
    return str(item)


def _ms(seconds: float) -> float:
    """Milliseconds to the microsecond (integer arithmetic: ``round(x, 3)`` costs 3× more)."""
    return int(seconds * 1_000_000 + 0.5) / 1000


def _ms_if(seconds: float | None) -> float | None:
    return None if seconds is None else _ms(seconds)


# --- outcomes on the wire ---------------------------------------------------------------
# A chunk hands its finished outcomes to another process to be stored, thousands a second:
# as positional JSON arrays under the field names they were written with, so the io side
# pays one orjson call (~1 µs per outcome) and a reader of another version fails with a
# clear message instead of storing columns in the wrong places.

WIRE_SCHEMA = {
    "outcome": list(HttpOutcome._fields),
    "timings": list(Timings._fields),
    "hop": list(RedirectHop._fields),
}


def encode_outcomes(outcomes: Iterable[HttpOutcome]) -> bytes:
    """``outcomes`` as JSON (UTF-8) that :func:`decode_outcomes` turns back into equal ones."""
    return orjson.dumps({"schema": WIRE_SCHEMA, "outcomes": list(outcomes)}, default=tuple)


def decode_outcomes(text: str | bytes) -> list[HttpOutcome]:
    """The outcomes :func:`encode_outcomes` wrote; InvalidInput when ``text`` is not that."""
    try:
        data = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise InvalidInput(f"shipped outcomes are not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("outcomes"), list):
        raise InvalidInput("shipped outcomes must be an object with a list of outcomes")
    if data.get("schema") != WIRE_SCHEMA:
        raise InvalidInput(
            f"shipped outcomes have fields {data.get('schema')!r}; this version "
            f"reads {WIRE_SCHEMA!r} (written by another version?)"
        )
    width = len(HttpOutcome._fields)
    out = []
    for n, row in enumerate(data["outcomes"]):
        try:
            if len(row) != width:
                raise ValueError(f"{len(row)} fields, not {width}")
            (
                index,
                url,
                method,
                final_url,
                status,
                redirects,
                timings,
                size,
                sha256,
                truncated,
                headers,
                error,
                message,
                attempts,
            ) = row
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ValueError(f"index {index!r}")
            out.append(
                HttpOutcome(
                    index,
                    url,
                    method,
                    final_url,
                    status,
                    tuple(RedirectHop(*hop) for hop in redirects),
                    Timings(*timings),
                    size,
                    sha256,
                    truncated,
                    tuple((name, value) for name, value in headers),
                    error,
                    message,
                    attempts,
                )
            )
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"shipped outcome {n} is malformed: {exc}") from None
    return out


def summarise(outcomes: Sequence[HttpOutcome]) -> dict[str, Any]:
    """Counts by status and by error class, for a batch's progress line and final table."""
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.error:
            errors[outcome.error] = errors.get(outcome.error, 0) + 1
        else:
            key = str(outcome.status)
            statuses[key] = statuses.get(key, 0) + 1
    return {
        "total": len(outcomes),
        "ok": len(outcomes) - sum(errors.values()),
        "statuses": statuses,
        "errors": errors,
    }


__all__ = [
    "fetch_all",
    "FetchPool",
    "encode_outcomes",
    "decode_outcomes",
    "normalise_url",
    "summarise",
    "HttpRequest",
    "HttpOutcome",
    "RedirectHop",
    "Timings",
    "METHODS",
    "IDEMPOTENT",
    "SELECTED_HEADERS",
]
