"""Load-test one endpoint from one process: closed loop or open loop, latency in a histogram.

Closed loop: ``concurrency`` coroutines each send, wait for the answer, send again.
Open loop: requests are *scheduled* at ``rate`` per second and each latency is measured from
its intended send time, so a server that stalls is charged for the requests that had to
wait (no coordinated omission); ``concurrency`` then caps requests in flight. Sends are
paced by a :class:`~.pacer.Pacer` (microsecond wake-ups), not the loop's millisecond timers,
so the schedule is the client's and not the timer's.

Before the clock starts, the run opens its connections the way wrk does, by one request per
connection (GET and HEAD runs only: those are safe to repeat; a POST run's first requests
open them inside the run). These warm-up answers are not counted; ``warmup`` says how many
there were.

Every request carries the run's headers and body; ``timeout`` cuts each request (an error
``timeout``, the worker goes on). ``ramp`` seconds at the start raise the load linearly to the
target: in a closed loop the connections start one after another over it, in an open loop the
rate rises from 0 to ``rate``. ``timeline`` counts, per second of the run, the requests that
ended in it, the failures among them (no answer, or a status ≥ 400, as locust counts them) and
their bytes.

The hot loop is a fixed pool of coroutines — no task per request — sharing one histogram,
one status counter and the caller's session. Parts run on many processes merge exactly with
:meth:`LoadResult.merge`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..errors import InvalidInput, OutOfScope
from . import httpclient as hc
from .histogram import LatencyHistogram
from .httprequest import check_header, normalise_url
from .pacer import Pacer
from .redact import redact_url

log = logging.getLogger(__name__)

LOAD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # those that may carry a body
UNFINISHED = "unfinished"  # error class: still in flight when the run's time was up
_DRAIN_GRACE = 2.0  # seconds in-flight requests get after the deadline before cancellation
STOP_INTERVAL = 0.05  # seconds between cancel checks of a run given ``stop``
_WARMUP_SECONDS = 1.0  # at most, when no start time gives the run its own lead
SAFE_METHODS = frozenset({"GET", "HEAD"})  # warm-up requests are sent only for these


@dataclass(frozen=True)
class LoadResult:
    """One run (or a merge of parts): counts, bytes and the latency histogram (µs)."""

    url: str
    method: str
    mode: str  # "closed" or "open"
    concurrency: int
    rate: float | None
    started_at: float  # wall clock, seconds since the epoch
    duration_s: float
    requests: int  # answered (any status)
    bytes: int
    status_counts: Mapping[str, int] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    parts: int = 1
    warmup: int = 0  # uncounted requests that opened connections before the clock started
    # Open loop only: latency from each request's *actual* send, which leaves out the time it
    # waited for its turn (what wrk and most closed-loop tools report; wrk2 calls it
    # "uncorrected"). In a closed loop the two are one and the same: ``latency``.
    service: LatencyHistogram | None = None
    ramp_s: float | None = None
    # per second of the run: [requests ended, failures among them, bytes received]
    timeline: tuple[tuple[int, int, int], ...] = ()
    cancelled: bool = False  # stopped early by a cancel: the figures cover the time it ran

    @property
    def service_latency(self) -> LatencyHistogram:
        return self.latency if self.service is None else self.service

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "method": self.method,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "rps": round(self.rps, 1),
            "bytes": self.bytes,
            "status_counts": dict(self.status_counts),
            "errors": dict(self.errors),
            "parts": self.parts,
            "warmup": self.warmup,
            "latency_ms": self.latency.summary(),
            "histogram": self.latency.to_dict(),
            "service_ms": self.service_latency.summary(),
            "ramp_s": self.ramp_s,
            "timeline": [list(second) for second in self.timeline],
            "cancelled": self.cancelled,
            **({} if self.service is None else {"service_histogram": self.service.to_dict()}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadResult:
        """The result :meth:`to_dict` gave (say, from a part task's JSON)."""
        try:
            return cls(
                str(data["url"]),
                str(data["method"]),
                str(data["mode"]),
                int(data["concurrency"]),
                None if data["rate"] is None else float(data["rate"]),
                float(data["started_at"]),
                float(data["duration_s"]),
                int(data["requests"]),
                int(data["bytes"]),
                {str(k): int(v) for k, v in data["status_counts"].items()},
                {str(k): int(v) for k, v in data["errors"].items()},
                LatencyHistogram.from_dict(data["histogram"]),
                int(data.get("parts", 1)),
                int(data.get("warmup", 0)),
                LatencyHistogram.from_dict(data["service_histogram"])
                if data.get("service_histogram") is not None
                else None,
                None if data.get("ramp_s") is None else float(data["ramp_s"]),
                tuple((int(a), int(f), int(b)) for a, f, b in data.get("timeline") or ()),
                bool(data.get("cancelled", False)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"malformed load test result: {exc!r}") from None

    @classmethod
    def merge(cls, parts: Iterable[LoadResult]) -> LoadResult:
        """Parts run side by side (same start) as one result: counts add, histograms merge
        exactly, the duration is the longest part's."""
        parts = list(parts)
        if not parts:
            raise InvalidInput("nothing to merge: no load test parts")
        first = parts[0]
        rates = [p.rate for p in parts]
        return cls(
            first.url,
            first.method,
            first.mode,
            sum(p.concurrency for p in parts),
            None if None in rates else sum(r for r in rates if r is not None),
            min(p.started_at for p in parts),
            max(p.duration_s for p in parts),
            sum(p.requests for p in parts),
            sum(p.bytes for p in parts),
            _add(p.status_counts for p in parts),
            _add(p.errors for p in parts),
            LatencyHistogram.merged(p.latency for p in parts),
            sum(p.parts for p in parts),
            sum(p.warmup for p in parts),
            None
            if any(p.service is None for p in parts)
            else LatencyHistogram.merged(p.service for p in parts if p.service is not None),
            first.ramp_s,
            _add_timelines(p.timeline for p in parts),
            any(p.cancelled for p in parts),
        )


def _add_timelines(
    timelines: Iterable[Sequence[tuple[int, int, int]]],
) -> tuple[tuple[int, int, int], ...]:
    """Second by second sums (parts start together, so their seconds line up)."""
    total: list[list[int]] = []
    for timeline in timelines:
        for index, second in enumerate(timeline):
            if index == len(total):
                total.append([0, 0, 0])
            for k in range(3):
                total[index][k] += second[k]
    return tuple((a, f, b) for a, f, b in total)


def _add(counters: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counter in counters:
        for key, n in counter.items():
            total[key] = total.get(key, 0) + n
    return dict(sorted(total.items()))


def check_request_options(
    *,
    method: str,
    headers: Sequence[Sequence[str]] | None,
    body: str | None,
    timeout: float | None,
    ramp: float | None,
    duration: float | None,
    max_body: int,
) -> None:
    """InvalidInput naming the flaw in a run's headers (``[[name, value], …]``), body (text,
    at most ``max_body`` bytes in UTF-8), per-request ``timeout`` or ``ramp`` (seconds)."""
    if headers is not None:
        if not isinstance(headers, list | tuple):
            raise InvalidInput("headers must be a list of [name, value] pairs")
        for pair in headers:
            if (
                not isinstance(pair, list | tuple)
                or len(pair) != 2
                or not all(isinstance(part, str) for part in pair)
            ):
                raise InvalidInput(f"a header is a [name, value] pair of text, not {pair!r}")
            check_header(pair[0], pair[1])
    if body is not None:
        if not isinstance(body, str):
            raise InvalidInput("the body must be text")
        if method not in BODY_METHODS:
            raise InvalidInput(
                f"a {method} request carries no body (use one of {', '.join(sorted(BODY_METHODS))})"
            )
        try:
            size = len(body.encode())
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"the body is not encodable text: {exc.reason}") from None
        if size > max_body:
            raise InvalidInput(
                f"the body is {size:,} bytes, over the cap of {max_body:,} "
                "(loadtest.max_body_bytes)"
            )
    for name, value in (("timeout", timeout), ("ramp", ramp)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise InvalidInput(f"{name} must be a number of seconds > 0, not {value!r}")
    if ramp is not None and duration is not None and ramp >= duration:
        raise InvalidInput(f"the ramp ({ramp:g}s) must end before the run does ({duration:g}s)")


def check_load(
    *,
    concurrency: int,
    duration: float | None,
    requests: int | None,
    rate: float | None,
    method: str,
    max_duration: float,
    max_concurrency: int,
    max_rate: float,
    max_requests: int,
) -> None:
    """InvalidInput naming the cap or parameter if this run may not go ahead."""
    if method not in LOAD_METHODS:
        raise InvalidInput(f"method {method!r} is not one of {', '.join(sorted(LOAD_METHODS))}")
    if not 1 <= concurrency <= max_concurrency:
        raise InvalidInput(
            f"concurrency {concurrency} is outside 1..{max_concurrency} (max_concurrency)"
        )
    if duration is None and requests is None:
        raise InvalidInput("give a duration or a number of requests")
    if duration is not None and not 0 < duration <= max_duration:
        raise InvalidInput(
            f"duration {duration:g}s is outside (0, {max_duration:g}s] (max_duration)"
        )
    if requests is not None and not 1 <= requests <= max_requests:
        raise InvalidInput(f"requests {requests} is outside 1..{max_requests} (max_requests)")
    if rate is not None and not 0 < rate <= max_rate:
        raise InvalidInput(f"rate {rate:g}/s is outside (0, {max_rate:g}/s] (max_rate)")


async def run_loadtest(
    session: aiohttp.ClientSession,
    url: str,
    *,
    concurrency: int,
    duration: float | None = None,
    requests: int | None = None,
    rate: float | None = None,
    method: str = "GET",
    headers: Sequence[Sequence[str]] | None = None,
    body: str | None = None,
    timeout: float | None = None,
    ramp: float | None = None,
    max_body: int = 1 << 20,
    start_at: float | None = None,
    max_duration: float = 60.0,
    max_concurrency: int = 1000,
    max_rate: float = 100_000,
    max_requests: int = 5_000_000,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    progress_interval: float = 1.0,
    drain_grace: float = _DRAIN_GRACE,
    stop: Callable[[], bool] | None = None,
    stop_interval: float = STOP_INTERVAL,
) -> LoadResult:
    """Load ``url`` for ``duration`` seconds or ``requests`` requests (whichever ends first).

    Without ``rate``: closed loop at ``concurrency``. With it: open loop at ``rate``/s.
    ``start_at`` (wall clock) makes parts on many processes start together; the run never
    outlasts ``max_duration`` (+ a short drain). OutOfScope if the target is refused.
    ``headers`` (``[[name, value], …]``), ``body`` (text), ``timeout`` (per request) and
    ``ramp`` (seconds to reach full load) are checked by :func:`check_request_options`.

    ``on_progress`` is called on the loop every ``progress_interval`` s: it must not block
    (hand slow writes to a thread). Its failures are logged once and never end the run.

    ``stop`` (a cancel check; it may block, so it runs in a thread) is asked every
    ``stop_interval`` s: once it says True, requests in flight are cancelled and no more are
    sent, and the result covers the time the run had (``cancelled``).
    """
    method = method.upper()
    check_load(
        concurrency=concurrency,
        duration=duration,
        requests=requests,
        rate=rate,
        method=method,
        max_duration=max_duration,
        max_concurrency=max_concurrency,
        max_rate=max_rate,
        max_requests=max_requests,
    )
    check_request_options(
        method=method,
        headers=headers,
        body=body,
        timeout=timeout,
        ramp=ramp,
        duration=duration,
        max_body=max_body,
    )
    shape = _Shape(
        tuple((str(k), str(v)) for k, v in headers or ()),
        None if body is None else body.encode(),
        None if timeout is None else aiohttp.ClientTimeout(total=timeout),
        ramp,
    )
    target = normalise_url(url)
    warmed = 0
    if method in SAFE_METHODS:  # within the lead a common start time leaves, if there is one
        lead = _WARMUP_SECONDS if start_at is None else min(_WARMUP_SECONDS, start_at - time.time())
        warmed = await _warm_up(session, method, target, concurrency, lead, shape)
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    if stop is not None and await asyncio.to_thread(stop):  # cancelled before it started
        warmed = 0
    run = _Run(
        session,
        method,
        target,
        concurrency,
        requests,
        rate,
        duration if duration is not None else max_duration,
        drain_grace,
        shape,
    )
    ticker = (
        asyncio.create_task(_report(run, on_progress, progress_interval)) if on_progress else None
    )
    try:
        await run.go(stop, stop_interval)
    finally:
        if ticker is not None:
            ticker.cancel()
    if run.refused is not None:
        raise OutOfScope(f"load test refused: {redact_url(run.refused)}")
    return LoadResult(
        redact_url(str(target)),
        method,
        "closed" if rate is None else "open",
        concurrency,
        rate,
        run.started_at,
        run.elapsed,
        run.answered,
        run.bytes,
        {str(k): n for k, n in sorted(run.statuses.items())},
        dict(sorted(run.errors.items())),
        run.latency,
        warmup=warmed,
        service=run.service,
        ramp_s=ramp,
        timeline=tuple((a, f, b) for a, f, b in run.timeline),
        cancelled=run.cancelled,
    )


@dataclass(frozen=True)
class _Shape:
    """What every request of a run carries, ready for aiohttp."""

    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    timeout: aiohttp.ClientTimeout | None = None
    ramp: float | None = None

    def kwargs(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"allow_redirects": False}
        if self.headers:
            extra["headers"] = list(self.headers)
        if self.body is not None:
            extra["data"] = self.body
        if self.timeout is not None:
            extra["timeout"] = self.timeout
        return extra


def ramp_offset(n: int, rate: float, ramp: float | None) -> float:
    """Seconds after the start at which an open loop sends its ``n``-th request (from 0) when
    the rate rises linearly from 0 to ``rate`` over ``ramp`` s: ``rate·t²/(2·ramp)`` requests
    are due by ``t`` within the ramp, ``rate`` per second after it."""
    if not ramp:
        return n / rate
    in_ramp = rate * ramp / 2
    if n < in_ramp:
        return math.sqrt(2 * n * ramp / rate)
    return ramp + (n - in_ramp) / rate


async def _warm_up(
    session: aiohttp.ClientSession,
    method: str,
    target: Any,
    connections: int,
    seconds: float,
    shape: _Shape,
) -> int:
    """Open up to ``connections`` keep-alive connections, one request each, within ``seconds``;
    how many answered. Failures are left for the run itself to count."""
    if seconds <= 0:
        return 0

    async def one() -> None:
        async with session.request(method, target, **shape.kwargs()) as resp:
            await _discard(resp.content)

    tasks = [asyncio.create_task(one()) for _ in range(connections)]
    try:
        await asyncio.wait(tasks, timeout=seconds)
    finally:
        await _cancel(tasks)
    return sum(1 for task in tasks if not task.cancelled() and task.exception() is None)


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel those still running and wait until they have stopped."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)


class _Run:
    """The state one run's worker coroutines share (single-threaded: no locks needed)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        method: str,
        target: Any,
        concurrency: int,
        requests: int | None,
        rate: float | None,
        seconds: float,
        grace: float,
        shape: _Shape,
    ) -> None:
        self.session, self.method, self.target = session, method, target
        self.shape, self.kwargs = shape, shape.kwargs()
        self.timeline: list[list[int]] = [[0, 0, 0] for _ in range(max(1, math.ceil(seconds)))]
        self.concurrency, self.rate, self.seconds, self.grace = concurrency, rate, seconds, grace
        self.limit = requests if requests is not None else 1 << 62
        self.issued = self.answered = self.bytes = 0
        self.statuses: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.latency = LatencyHistogram()
        self.service = LatencyHistogram() if rate is not None else None
        self.refused: str | None = None
        self.started_at = time.time()
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + seconds
        self.elapsed = 0.0
        self.pacer: Pacer | None = None
        self.cancelled = False

    async def go(
        self, stop: Callable[[], bool] | None = None, stop_interval: float = STOP_INTERVAL
    ) -> None:
        self.started_at, self.t0 = time.time(), time.perf_counter()
        self.deadline = self.t0 + self.seconds
        worker = self._closed if self.rate is None else self._open
        self.pacer = Pacer() if self.rate is not None else None
        tasks = [asyncio.create_task(worker(i)) for i in range(self.concurrency)]
        watcher = (
            asyncio.create_task(self._watch(stop, stop_interval, tasks))
            if stop is not None
            else None
        )
        try:
            await asyncio.wait(tasks, timeout=self.seconds + self.grace)
        finally:  # the time is up, or the run itself was cancelled: no worker goes on
            if watcher is not None:
                await _cancel([watcher])
            await _cancel(tasks)
            if self.pacer is not None:
                self.pacer.close()
        # the run's measured time: up to its deadline, never the grace given to answers still
        # in flight (those that come are counted; those that do not are 'unfinished')
        self.elapsed = min(time.perf_counter(), self.deadline) - self.t0
        self._trim()
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]  # a bug, not a network error

    async def _watch(
        self, stop: Callable[[], bool], interval: float, tasks: list[asyncio.Task[Any]]
    ) -> None:
        """Cancel the workers (and what they have in flight) once ``stop()`` says so."""
        while not await asyncio.to_thread(stop):
            await asyncio.sleep(interval)
        self.cancelled = True
        self.deadline = min(self.deadline, time.perf_counter())  # the run ends now
        for task in tasks:
            task.cancel()

    async def _closed(self, index: int) -> None:
        perf, deadline, limit = time.perf_counter, self.deadline, self.limit
        held = b""
        if self.shape.ramp:  # connection ``index`` of ``concurrency`` joins this far in
            await asyncio.sleep(
                max(0.0, self.t0 + self.shape.ramp * index / self.concurrency - perf())
            )
        while self.issued < limit and self.refused is None:
            sent = perf()
            if sent >= deadline:
                return
            self.issued += 1
            held = await self._request(sent, held)

    async def _open(self, index: int) -> None:
        deadline, limit, t0, until = self.deadline, self.limit, self.t0, self.pacer.until  # type: ignore[union-attr]
        rate, ramp = float(self.rate), self.shape.ramp  # type: ignore[arg-type]
        held = b""
        while self.issued < limit and self.refused is None:
            intended = t0 + ramp_offset(self.issued, rate, ramp)
            if intended >= deadline:
                return
            self.issued += 1
            await until(intended)  # at once when behind the schedule
            # latency from when it *should* have gone; service time from when it went
            held = await self._request(intended, held, time.perf_counter())

    async def _request(self, started: float, held: bytes, sent: float | None = None) -> bytes:
        """One request, its latency recorded from ``started``. Returns the body chunk the
        worker holds until its next response (``held`` again if this one failed; see _discard)."""
        try:
            async with self.session.request(self.method, self.target, **self.kwargs) as resp:
                status = resp.status
                size, held = await _discard(resp.content)
        except asyncio.CancelledError:
            self.errors[UNFINISHED] = self.errors.get(UNFINISHED, 0) + 1
            self._second(True, 0)
            raise
        except Exception as exc:
            self._failed(exc)
            self._second(True, 0)
            return held
        answered = time.perf_counter()
        self._second(status >= 400, size, answered)
        self.latency.record(int((answered - started) * 1_000_000))
        if sent is not None:
            self.service.record(int((answered - sent) * 1_000_000))  # type: ignore[union-attr]
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.answered += 1
        self.bytes += size
        return held

    def _trim(self) -> None:
        """The timeline cut to the seconds the run lasted, later ones folded into its last."""
        keep = max(1, math.ceil(self.elapsed))
        for second in self.timeline[keep:]:
            for k in range(3):
                self.timeline[keep - 1][k] += second[k]
        del self.timeline[keep:]

    def _second(self, failed: bool, size: int, now: float | None = None) -> None:
        """Count a request that ended now in its second (the grace's in the last one)."""
        at = int((time.perf_counter() if now is None else now) - self.t0)
        second = self.timeline[min(max(at, 0), len(self.timeline) - 1)]
        second[0] += 1
        second[1] += failed
        second[2] += size

    def _failed(self, exc: Exception) -> None:
        error, message = hc.classify_error(exc)
        self.errors[error] = self.errors.get(error, 0) + 1
        if error in (hc.OUT_OF_SCOPE, hc.INVALID_URL):
            self.refused = message  # every further request would be refused too: stop


async def _discard(content: aiohttp.StreamReader) -> tuple[int, bytes]:
    """Read a body to its end, counting and dropping it: memory per connection stays at the
    stream's buffer (its high-water mark), however much the server sends.

    Returns the byte count and the last chunk read. Workers hold that chunk (``held``) until
    their next response replaces it: freeing every body at once lets glibc trim the heap
    and fault it in again on each response (measured: ~30 % fewer req/s with 64 KiB bodies).
    """
    size, chunk = 0, b""
    while not content.at_eof():  # one await when the whole body is buffered already
        chunk = await content.readany()
        size += len(chunk)
    return size, chunk


async def _report(run: _Run, on_progress: Callable[[dict[str, Any]], None], every: float) -> None:
    failed = False
    while True:
        await asyncio.sleep(every)
        elapsed = time.perf_counter() - run.t0
        try:
            on_progress(
                {
                    "elapsed_s": round(elapsed, 3),
                    "requests": run.answered,
                    "errors": sum(run.errors.values()),
                    "rps": round(run.answered / elapsed, 1) if elapsed > 0 else 0.0,
                }
            )
        except Exception as exc:  # a progress line is a nicety: the run goes on without it
            if not failed:
                failed = True
                log.warning(
                    "load test of %s: progress not reported (%r); the run goes on, "
                    "further failures are not logged",
                    run.target,
                    exc,
                )


__all__ = [
    "run_loadtest",
    "check_load",
    "check_request_options",
    "ramp_offset",
    "LoadResult",
    "LOAD_METHODS",
    "BODY_METHODS",
    "UNFINISHED",
]
