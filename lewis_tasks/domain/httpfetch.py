"""Fetch a batch of URLs at once: status, redirect chain, timings, body hash — or why not.

``fetch_all`` runs a fixed pool of ``concurrency`` coroutines over the batch on a session
from :func:`~lewis_tasks.domain.httpclient.create_session`. Redirects are followed here,
one hop at a time, so the session's scope guard checks every hop's addresses. Each URL has
one time budget covering its hops and retries; a URL that fails becomes an ``HttpOutcome``
with an error class, and the batch goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from ..errors import InvalidInput
from . import httpclient as hc
from .scope import parse_ip

METHODS = frozenset({"GET", "HEAD", "POST"})
IDEMPOTENT = frozenset({"GET", "HEAD"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
SELECTED_HEADERS = ("server", "content-type", "content-length", "content-encoding", "location",
                    "last-modified", "etag", "cache-control", "x-powered-by",
                    "strict-transport-security", "content-security-policy", "www-authenticate")
_MAX_HEADER_VALUE = 1024
_DROP_CROSS_ORIGIN = frozenset({"authorization", "cookie", "proxy-authorization"})


def normalise_url(text: str | URL) -> URL:
    """``text`` as an absolute http(s) URL whose host is canonical; InvalidInput naming the flaw.

    Numeric host spellings (``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``) become the
    address they mean, so the guard and the result both show the real peer.
    """
    try:
        url = text if isinstance(text, URL) else URL(text.strip())
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{str(text)!r} is not a URL: {exc}") from None
    if url.scheme not in hc.SCHEMES:
        shown = f"{url.scheme}://" if url.scheme else "no scheme"
        raise InvalidInput(f"{str(text)!r}: only http:// and https:// are fetched, not {shown}")
    host = url.raw_host
    if not host:
        raise InvalidInput(f"{str(text)!r} has no host")
    addr = parse_ip(host)
    if addr is not None:
        return url if str(addr) == host else url.with_host(str(addr))
    if not all(c.isalnum() or c in "-._" for c in host) or host.strip(".") == "":
        raise InvalidInput(f"{str(text)!r}: {host!r} is not a valid host name")
    return url


@dataclass(frozen=True)
class HttpRequest:
    """One request of a batch; build it with :meth:`parse` from a URL string or a dict."""

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None

    @classmethod
    def parse(cls, item: str | Mapping[str, Any] | HttpRequest) -> HttpRequest:
        """From ``"http://…"`` or ``{"url", "method", "headers", "body"}``; InvalidInput if bad."""
        if isinstance(item, HttpRequest):
            return item
        if isinstance(item, str):
            return cls(str(normalise_url(item)))
        if not isinstance(item, Mapping):
            raise InvalidInput(f"a request is a URL or a mapping, not {type(item).__name__}")
        unknown = set(item) - {"url", "method", "headers", "body"}
        if unknown:
            raise InvalidInput(f"unknown request field(s): {', '.join(sorted(unknown))}")
        method = str(item.get("method") or "GET").upper()
        if method not in METHODS:
            raise InvalidInput(f"method {method!r} is not one of {', '.join(sorted(METHODS))}")
        raw_headers = item.get("headers") or {}
        if not isinstance(raw_headers, Mapping):
            raise InvalidInput("headers must be a mapping of name to value")
        headers = tuple((str(k), str(v)) for k, v in raw_headers.items())
        for name, value in headers:
            if not name or any(c in name for c in ":\r\n ") or any(c in value for c in "\r\n"):
                raise InvalidInput(f"header {name!r} is malformed")
        body = item.get("body")
        if isinstance(body, str):
            body = body.encode()
        if body is not None and not isinstance(body, bytes):
            raise InvalidInput("body must be text or bytes")
        if body is not None and method != "POST":
            raise InvalidInput(f"a {method} request carries no body")
        return cls(str(normalise_url(str(item.get("url", "")))), method, headers, body)


@dataclass(frozen=True)
class RedirectHop:
    url: str
    status: int
    location: str

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "location": self.location}


@dataclass(frozen=True)
class Timings:
    """Milliseconds; dns/connect/ttfb of the last hop (None when a pooled connection was
    reused), total for the whole URL including redirects and retries."""

    dns_ms: float | None = None
    connect_ms: float | None = None
    ttfb_ms: float | None = None
    total_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"dns_ms": self.dns_ms, "connect_ms": self.connect_ms,
                "ttfb_ms": self.ttfb_ms, "total_ms": self.total_ms}


@dataclass(frozen=True)
class HttpOutcome:
    """What one URL of a batch gave: an answer (``status``) or an ``error`` class and message."""

    index: int
    url: str
    method: str
    final_url: str | None = None
    status: int | None = None
    redirects: tuple[RedirectHop, ...] = ()
    timings: Timings = field(default_factory=Timings)
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
        return {"index": self.index, "url": self.url, "method": self.method,
                "final_url": self.final_url, "status": self.status,
                "redirects": [hop.to_dict() for hop in self.redirects],
                "timings": self.timings.to_dict(), "bytes": self.bytes, "sha256": self.sha256,
                "truncated": self.truncated, "headers": dict(self.headers),
                "error": self.error, "message": self.message, "attempts": self.attempts}


class _Failed(Exception):
    """A hop's failure with its class already decided (too many redirects, bad Location)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error, self.message = error, message


async def fetch_all(session: aiohttp.ClientSession,
                    requests: Iterable[str | Mapping[str, Any] | HttpRequest], *,
                    concurrency: int, max_body_bytes: int, max_redirects: int, retries: int,
                    total_timeout: float, on_result: Callable[[HttpOutcome], None] | None = None,
                    backoff: float = 0.1) -> list[HttpOutcome]:
    """One HttpOutcome per request, in order; at most ``concurrency`` in flight.

    ``total_timeout`` bounds each URL (hops and retries included); ``on_result`` is called
    as each URL finishes, for progress.
    """
    for name, value, low in (("concurrency", concurrency, 1), ("max_body_bytes", max_body_bytes, 0),
                             ("max_redirects", max_redirects, 0), ("retries", retries, 0)):
        if value < low:
            raise InvalidInput(f"{name} must be ≥ {low}, not {value}")
    if total_timeout <= 0:
        raise InvalidInput(f"total_timeout must be > 0, not {total_timeout}")
    items = list(requests)
    results: list[HttpOutcome | None] = [None] * len(items)
    todo = iter(range(len(items)))
    options = (max_body_bytes, max_redirects, retries, total_timeout, backoff)

    async def work() -> None:
        for i in todo:  # one shared iterator: each index is taken by exactly one worker
            outcome = await _fetch_one(session, i, items[i], *options)
            results[i] = outcome
            if on_result is not None:
                on_result(outcome)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(items))):
            group.create_task(work())
    return [r for r in results if r is not None]


async def _fetch_one(session: aiohttp.ClientSession, index: int, item: Any, max_body: int,
                     max_redirects: int, retries: int, budget: float,
                     backoff: float) -> HttpOutcome:
    started = time.perf_counter()
    try:
        request = HttpRequest.parse(item)
    except InvalidInput as exc:
        url = _url_of(item)
        try:  # was it the URL, or the rest of the request?
            normalise_url(url)
            error = hc.INVALID_REQUEST
        except InvalidInput:
            error = hc.INVALID_URL
        method = str(item.get("method") or "GET") if isinstance(item, Mapping) else "GET"
        return HttpOutcome(index, url, method, error=error, message=str(exc), attempts=0)
    attempt = 0
    hops: list[RedirectHop] = []  # of the current attempt, kept when it fails
    try:
        async with asyncio.timeout(budget):
            while True:
                attempt += 1
                hops = []
                try:
                    return await _follow(session, index, request, max_body, max_redirects,
                                         started, attempt, hops)
                except _Failed:
                    raise
                except Exception as exc:
                    error, message = hc.classify_error(exc)
                    if (error not in hc.TRANSIENT or request.method not in IDEMPOTENT
                            or attempt > retries):
                        raise _Failed(error, message) from exc
                    pause = backoff * 2 ** (attempt - 1) * (0.5 + random.random() / 2)
                    await asyncio.sleep(pause)
    except _Failed as failed:
        error, message = failed.error, failed.message
    except TimeoutError:
        error, message = hc.TIMEOUT, f"no complete answer within {budget:g} s"
    total = _ms(time.perf_counter() - started)
    return HttpOutcome(index, request.url, request.method, redirects=tuple(hops),
                       timings=Timings(total_ms=total), error=error, message=message,
                       attempts=attempt)


async def _follow(session: aiohttp.ClientSession, index: int, request: HttpRequest,
                  max_body: int, max_redirects: int, started: float, attempt: int,
                  hops: list[RedirectHop]) -> HttpOutcome:
    url, method, body = URL(request.url, encoded=True), request.method, request.body
    headers = dict(request.headers)
    while True:
        marks = hc.HopTimings()
        sent = time.perf_counter()
        async with session.request(method, url, headers=headers, data=body,
                                   allow_redirects=False, trace_request_ctx=marks) as resp:
            ttfb = time.perf_counter() - sent
            location = resp.headers.get("Location")
            if resp.status in REDIRECTS and location:
                hops.append(RedirectHop(str(url), resp.status, location))
                if len(hops) > max_redirects:
                    raise _Failed(hc.TOO_MANY_REDIRECTS, f"more than {max_redirects} redirects")
                try:
                    target = normalise_url(url.join(URL(location)))
                except (InvalidInput, ValueError) as exc:
                    raise _Failed(hc.INVALID_URL, f"redirect to {location!r}: {exc}") from None
                if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                    method = "GET" if method != "HEAD" else "HEAD"
                    body = None
                if target.origin() != url.origin():
                    headers = {k: v for k, v in headers.items() if k.lower() not in _DROP_CROSS_ORIGIN}
                url = target
                continue
            size, digest, truncated = await _read_capped(resp, max_body)
            selected = tuple((name, resp.headers[name][:_MAX_HEADER_VALUE])
                             for name in SELECTED_HEADERS if name in resp.headers)
            timings = Timings(_ms(marks.dns), _ms(marks.connect), _ms(ttfb),
                              _ms(time.perf_counter() - started))
            return HttpOutcome(index, request.url, request.method, str(url), resp.status,
                               tuple(hops), timings, size, digest, truncated, selected,
                               attempts=attempt)


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> tuple[int, str, bool]:
    """Bytes read, SHA-256 of them, and whether the body went on past ``cap`` (then unread)."""
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


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


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
    return {"total": len(outcomes), "ok": len(outcomes) - sum(errors.values()),
            "statuses": statuses, "errors": errors}


__all__ = ["fetch_all", "normalise_url", "summarise", "HttpRequest", "HttpOutcome",
           "RedirectHop", "Timings", "METHODS", "IDEMPOTENT", "SELECTED_HEADERS"]
