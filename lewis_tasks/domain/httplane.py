"""The batch fetcher's lean lane: plain-http GET and HEAD on connections it pools itself.

``ClientSession.request`` builds for every request a ``ClientRequest`` (URL, three layers of
headers, a connection key), a ``ClientResponse``, a pool lookup by that key and a new
response parser: about half of an io process's CPU per URL in an HTTP batch (issue 18.5;
BENCHMARKS.md). For the batch's common hop — ``http://``, GET or HEAD, no body — this lane
writes the request line and headers as one buffer on a kept-alive connection and reads the
answer with aiohttp's own protocol and C parser (:class:`aiohttp.client_proto.
ResponseHandler`), so status, headers, chunked and compressed bodies, size limits and
errors read exactly as the session's. https, bodies and other methods go to the session.

The scope is checked as the session's connector checks it: an address literal before any
pooled connection is asked; a name through the session's :class:`~.httpclient.
ScopedResolver` (every address it gives); each address again, on behalf of this request's
host, right before its socket is made. A pooled connection serves its own host and port
only. ``limit`` and ``limit_per_host`` bound this lane's connections as the connector's
bound its own (a request waits for one to free); idle connections close after
``keepalive`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import _gen_default_accept_encoding
from aiohttp.http import SERVER_SOFTWARE, HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..errors import OutOfScope
from .scope import Scope, parse_ip

_Key = tuple[str, int]  # (host as in the URL, port)
LANE_METHODS = frozenset({"GET", "HEAD"})
KEEPALIVE = 15.0  # seconds an idle connection is kept: aiohttp's default
# What the session sends unasked, so a server sees the same request from either path.
_AUTO: tuple[tuple[str, str], ...] = (
    ("Accept", "*/*"),
    ("Accept-Encoding", _gen_default_accept_encoding()),
    ("User-Agent", SERVER_SOFTWARE),
)


class LiteralCheck:
    """OutOfScope for a host that is an address outside the scope, before any pool is asked:
    the refusal (or its absence) is kept per host, for up to 4,096 hosts."""

    def __init__(self, scope: Scope) -> None:
        self._scope = scope
        self._seen: dict[str, OutOfScope | None] = {}

    def check(self, host: str | None) -> None:
        if host is None:
            return
        try:
            refusal = self._seen[host]
        except KeyError:
            refusal = None
            if parse_ip(host) is not None:
                try:
                    self._scope.check_peer(host, None)
                except OutOfScope as exc:
                    refusal = exc
            if len(self._seen) >= 4096:
                self._seen.clear()
            self._seen[host] = refusal
        if refusal is not None:
            raise OutOfScope(str(refusal))


class LeanLane:
    """Kept-alive plain-http connections for GET and HEAD; see the module's docstring."""

    def __init__(
        self,
        scope: Scope,
        resolver: Any,
        *,
        limit: int,
        limit_per_host: int,
        connect_timeout: float | None,
        read_timeout: float | None,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self._scope = scope
        self._resolver = resolver
        self.limit, self.limit_per_host = limit, limit_per_host
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self.keepalive = keepalive
        self._idle: dict[_Key, list[tuple[ResponseHandler, float]]] = {}
        self._open: dict[_Key, int] = {}  # connections per key, in use or idle
        self._total = 0
        self._waiters: dict[_Key, deque[asyncio.Future[ResponseHandler | None]]] = {}
        self._literals = LiteralCheck(scope)
        self._sweep: asyncio.TimerHandle | None = None
        self.closed = False
        self.served = 0  # requests sent by this lane

    @property
    def connections(self) -> int:
        """Connections open (in use, idle or being opened)."""
        return self._total

    def serves(self, url: URL, method: str, body: bytes | None) -> bool:
        """Whether this hop is the lane's: http://, GET or HEAD, no body, lane open."""
        return url.scheme == "http" and body is None and method in LANE_METHODS and not self.closed

    async def request(
        self, method: str, url: URL, headers: dict[str, str] | None, marks: Any = None
    ) -> LeanResponse:
        """Send one request and read its status and headers; the body is the caller's to
        read, then ``release()`` (or leave the ``async with``).

        As the session does (RFC 9112, 9.3.1), a request whose connection dies before the
        answer's head is sent once more, on another connection: GET and HEAD are idempotent.
        A failure to connect is not retried here."""
        host = url.raw_host or ""
        key = (host, url.port or 80)
        self._literals.check(host)  # before the pool, as the connector does
        head = _head(method, url, headers)
        retry = True
        while True:
            try:
                return await self._exchange(key, method, url, head, marks)
            except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError):
                raise
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                if not retry:
                    raise
                retry = False

    async def _exchange(
        self, key: _Key, method: str, url: URL, head: bytes, marks: Any
    ) -> LeanResponse:
        proto = await self._acquire(key, url, marks)
        try:
            proto.set_response_params(
                skip_payload=method == "HEAD",
                read_until_eof=True,
                read_timeout=self._read_timeout,
            )
            assert proto.transport is not None
            proto.transport.write(head)
            self.served += 1
            proto.start_timeout()
            while True:
                try:
                    message, payload = await proto.read()
                except HttpProcessingError as exc:  # as ClientResponse.start raises it
                    raise aiohttp.ClientResponseError(
                        _request_info(method, url),
                        (),
                        status=exc.code,
                        message=exc.message,
                        headers=exc.headers,
                    ) from exc
                if not 100 <= message.code <= 199 or message.code == 101:
                    break
        except BaseException:
            self._discard(key, proto)
            raise
        return LeanResponse(self, key, proto, message, payload)

    async def close(self) -> None:
        """Close the idle connections; those in use close when released."""
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for key, idle in list(self._idle.items()):
            for proto, _ in idle:
                self._count(key, -1)
                proto.close()
        self._idle.clear()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- the pool ------------------------------------------------------------------------

    async def _acquire(self, key: _Key, url: URL, marks: Any) -> ResponseHandler:
        while True:
            proto = self._take_idle(key)
            if proto is not None:
                return proto
            if self.closed:
                raise aiohttp.ClientConnectionError("the session is closed")
            if self._room_for(key):
                self._count(key, +1)  # held while connecting: the limits count it
                try:
                    return await self._connect(key, url, marks)
                except BaseException:
                    self._count(key, -1)
                    self._wake(key)
                    raise
            waiter: asyncio.Future[ResponseHandler | None] = (
                asyncio.get_running_loop().create_future()
            )
            waiters = self._waiters.setdefault(key, deque())
            waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:  # cancelled: what came for this request goes to the next
                if not waiter.done() or waiter.cancelled():
                    with contextlib.suppress(ValueError):
                        waiters.remove(waiter)
                elif (handed := waiter.result()) is not None:
                    self.release(key, handed)  # a connection, handed over
                else:
                    self._wake(key)  # a turn to open one
                raise
            if handed is not None:
                return handed

    def _take_idle(self, key: _Key) -> ResponseHandler | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            proto, since = idle.pop()
            if proto.is_connected() and now - since < self.keepalive:
                return proto
            self._count(key, -1)
            proto.close()
        return None

    def _room_for(self, key: _Key) -> bool:
        if self.limit_per_host and self._open.get(key, 0) >= self.limit_per_host:
            return False
        if self._total < self.limit:
            return True
        # the lane is full: an idle connection to another host makes room
        for other, idle in self._idle.items():
            if other != key and idle:
                proto, _ = idle.pop(0)
                self._count(other, -1)
                proto.close()
                return True
        return False

    def release(self, key: _Key, proto: ResponseHandler) -> None:
        """Back to the pool (or to a request waiting for this key), or closed when it cannot
        carry another request."""
        if self.closed or not proto.is_connected() or proto.should_close:
            self._discard(key, proto)
            return
        waiters = self._waiters.get(key)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(proto)
                return
        self._idle.setdefault(key, []).append((proto, time.monotonic()))
        if self._waiters:  # a request to another host may wait for room: this idle one makes it
            self._wake(key)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self.keepalive, self._expire)

    def _discard(self, key: _Key, proto: ResponseHandler) -> None:
        proto.close()
        self._count(key, -1)
        self._wake(key)

    def _wake(self, key: _Key) -> None:
        """A connection slot freed: the first request waiting on this key, or else on any."""
        for waiters in (self._waiters.get(key), *self._waiters.values()):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # it tries again: opens one, or waits anew
                    return

    def _count(self, key: _Key, step: int) -> None:
        self._total += step
        left = self._open.get(key, 0) + step
        if left:
            self._open[key] = left
        else:
            self._open.pop(key, None)
            if not self._waiters.get(key):
                self._waiters.pop(key, None)

    def _expire(self) -> None:
        self._sweep = None
        now, kept = time.monotonic(), False
        for key, idle in list(self._idle.items()):
            for entry in [e for e in idle if now - e[1] >= self.keepalive]:
                idle.remove(entry)
                self._discard(key, entry[0])
            kept = kept or bool(idle)
            if not idle:
                del self._idle[key]
        if kept and not self.closed:
            self._sweep = asyncio.get_running_loop().call_later(self.keepalive, self._expire)

    # -- a new connection ----------------------------------------------------------------

    async def _connect(self, key: _Key, url: URL, marks: Any) -> ResponseHandler:
        host, port = key
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                addresses = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
                last: OSError | None = None
                for address in addresses:
                    self._scope.check_peer(address["host"], host)  # the socket's own check
                    if marks is not None:
                        marks.connect_started = time.perf_counter()
                    sock = socket.socket(address["family"], socket.SOCK_STREAM)
                    try:
                        sock.setblocking(False)
                        await loop.sock_connect(sock, (address["host"], address["port"]))
                    except OSError as exc:
                        sock.close()
                        last = exc
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    _, proto = await loop.create_connection(
                        lambda: ResponseHandler(loop), sock=sock
                    )
                    if marks is not None:
                        marks.connect = time.perf_counter() - marks.connect_started
                    return proto
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}") from exc
        except OSError as exc:  # the name did not resolve
            raise aiohttp.ClientConnectorDNSError(_conn_key(host, port), exc) from exc
        raise aiohttp.ClientConnectorError(
            _conn_key(host, port), last or OSError(f"no address for {host}")
        ) from last


class LeanResponse:
    """The part of ``ClientResponse`` the fetcher reads: ``status``, ``headers``,
    ``content_length``, ``content`` and ``read()``; leaving ``async with`` gives the
    connection back when the body was read to its end, and closes it otherwise."""

    __slots__ = ("_lane", "_key", "_proto", "status", "headers", "content")

    def __init__(
        self, lane: LeanLane, key: _Key, proto: ResponseHandler, message: Any, payload: Any
    ) -> None:
        self._lane, self._key = lane, key
        self._proto: ResponseHandler | None = proto
        self.status: int = message.code
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content = payload

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        body: bytes = await self.content.read()
        return body

    def release(self, reusable: bool = True) -> None:
        proto, self._proto = self._proto, None
        if proto is None:
            return
        if reusable and self.content.is_eof():
            self._lane.release(self._key, proto)
        else:
            self._lane._discard(self._key, proto)

    async def __aenter__(self) -> LeanResponse:
        return self

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self.release(reusable=kind is None)


def _head(method: str, url: URL, headers: dict[str, str] | None) -> bytes:
    """The request line and headers, in the order aiohttp writes them: Host, the caller's,
    then the automatic ones the caller did not give."""
    lines = [f"{method} {url.raw_path_qs} HTTP/1.1", f"Host: {url.host_port_subcomponent}"]
    auto = _AUTO
    if headers:
        for name, value in headers.items():
            if name.lower() == "host":
                lines[1] = f"Host: {value}"
            else:
                lines.append(f"{name}: {value}")
        given = {name.lower() for name in headers}
        auto = tuple(pair for pair in _AUTO if pair[0].lower() not in given)
    lines.extend(f"{name}: {value}" for name, value in auto)
    lines.append("\r\n")
    return "\r\n".join(lines).encode()


def _request_info(method: str, url: URL) -> aiohttp.RequestInfo:
    return aiohttp.RequestInfo(url, method, CIMultiDictProxy(CIMultiDict()), url)


def _conn_key(host: str, port: int) -> Any:
    from aiohttp.client_reqrep import ConnectionKey

    return ConnectionKey(host, port, False, True, None, None, None)


__all__ = ["LeanLane", "LeanResponse", "LiteralCheck", "LANE_METHODS", "KEEPALIVE"]
