"""The one HTTP client session of an io worker process, with the SSRF guard built in.

Every connection the session opens passes the scope at connect time, never as a pre-check
of URL text: the resolver checks each address a name resolves to (with the name, so an
allowlisted hostname vouches for its addresses), and the socket factory — the last step
before ``connect()``, reached by IP-literal URLs that skip the resolver — checks the
address once more, on behalf of the request being connected and no other: a name's
permission never outlives its request, and an out-of-scope literal is refused before the
connection pool is even asked. ``localhost`` aliases resolve to loopback without asking DNS
(RFC 6761), proxies from the environment are ignored, and only http/https are spoken.

Failures are sorted into a few error classes (:func:`classify_error`) shared by the batch
fetcher and the load generator, so a result names *what* went wrong in one word.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from ..errors import InvalidInput, OutOfScope
from .httplane import LeanLane, LiteralCheck
from .scope import LOCALHOST_ADDRESSES, IPAddress, Scope, is_localhost_alias, parse_ip
from .urlhost import SCHEMES

# Error classes: one word per way a URL can fail.
TIMEOUT = "timeout"
CONNECTION_REFUSED = "connection_refused"
TLS = "tls"
TOO_LARGE = "too_large"
OUT_OF_SCOPE = "out_of_scope"
INVALID_URL = "invalid_url"
INVALID_REQUEST = "invalid_request"
TOO_MANY_REDIRECTS = "too_many_redirects"
CONNECTION_ERROR = "connection_error"
#: Worth another try (for idempotent methods): the network may answer next time.
TRANSIENT = frozenset({TIMEOUT, CONNECTION_REFUSED, CONNECTION_ERROR})


class ScopedResolver(AbstractResolver):
    """Resolves names like the system does, then refuses the lot if any address is out of scope.

    It keeps nothing between requests: what a name's resolution allowed is decided again, for
    that request alone, by the socket factory (:func:`guarded_socket_factory`).
    """

    def __init__(self, scope: Scope, inner: AbstractResolver | None = None) -> None:
        self._scope = scope
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        literal = parse_ip(host)  # 0x7f000001, 127.1 …: glibc would read them as addresses
        if literal is not None:
            results = [_result(host, literal, port)]
        elif is_localhost_alias(host):
            results = [_result(host, parse_ip(a), port) for a in LOCALHOST_ADDRESSES]  # type: ignore[arg-type]
        else:
            marks = _HOP.get()
            started = time.perf_counter()
            results = await self._inner.resolve(host, port, family)
            if marks is not None:
                marks.dns = time.perf_counter() - started
        for result in results:
            self._scope.check_peer(result["host"], host)
        return results

    async def close(self) -> None:
        await self._inner.close()


def _result(hostname: str, addr: IPAddress, port: int) -> ResolveResult:
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    return ResolveResult(
        hostname=hostname,
        host=str(addr),
        port=port,
        family=family,
        proto=0,
        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    )


def guarded_socket_factory(scope: Scope) -> Callable[[Any], socket.socket]:
    """A TCPConnector socket factory that refuses to create a socket for an out-of-scope peer.

    The peer is checked as the address the socket will connect to, on behalf of the request
    being connected (:class:`ScopedConnector` names its host): an allowlisted name vouches
    for its own addresses in its own request, never for a later request to a literal.
    Never-allowed classes are refused here too, whatever vouches for them.
    """

    def create(addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        scope.check_peer(str(sockaddr[0]), _PEER_HOST.get())
        marks = _HOP.get()
        if marks is not None:
            marks.connect_started = time.perf_counter()
        return socket.socket(family=family, type=type_, proto=proto)

    return create


class ScopedConnector(aiohttp.TCPConnector):
    """A TCPConnector that speaks plain http/https only (no ws://, no tcp://), connects each
    request on its own host's authority, and times the connections it opens for requests that
    carry :class:`HopTimings`."""

    allowed_protocol_schema_set = SCHEMES

    def __init__(self, scope: Scope, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._scope = scope
        self._literals = LiteralCheck(scope)  # IP-literal host → refusal, if any
        self.lane: LeanLane | None = None  # the batch fetcher's plain-http lane, if any

    async def close(self, *, abort_ssl: bool = False) -> None:
        if self.lane is not None:
            await self.lane.close()
        await super().close(abort_ssl=abort_ssl)

    async def connect(self, req: Any, *args: Any, **kwargs: Any) -> Any:
        if req.proxy is not None:  # the socket would go to the proxy, vouched for by the target
            raise OutOfScope(
                f"proxy {req.proxy} refused: LEWIS connects directly, never through one"
            )
        host = req.url.raw_host
        self._literals.check(host)  # before the pool: no pooled connection serves a refused peer
        token = _PEER_HOST.set(host)
        try:
            connection = await super().connect(req, *args, **kwargs)
        finally:
            _PEER_HOST.reset(token)
        marks = _HOP.get()
        if marks is not None and marks.connect_started is not None:  # a new socket was made
            marks.connect = time.perf_counter() - marks.connect_started
        return connection


def create_session(
    scope: Scope,
    *,
    max_connections: int,
    limit_per_host: int,
    connect_timeout: float,
    read_timeout: float | None,
    keep_alive: bool,
    verify_tls: bool = True,
) -> aiohttp.ClientSession:
    """The io worker's session: keep-alive pool, connect/read timeouts and the SSRF guard.

    Call it on the loop that will use it (from a coroutine, or with the loop running):
    aiohttp binds the session to that loop for good. ``read_timeout`` None saves a timer per
    response (~10 % of a small request's CPU); fetch_all and run_loadtest bound time anyway.
    """
    asyncio.get_running_loop()  # fail here, not at the first request, when called off-loop
    if max_connections < 1:
        raise InvalidInput(f"max_connections must be ≥ 1, not {max_connections}")
    resolver = ScopedResolver(scope)
    connector = ScopedConnector(
        scope,
        limit=max_connections,
        limit_per_host=max(0, limit_per_host),
        resolver=resolver,
        socket_factory=guarded_socket_factory(scope),
        force_close=not keep_alive,
        ssl=verify_tls,
        ttl_dns_cache=10,
    )
    # No total: a caller bounds the whole exchange itself (fetch_all per URL, loadgen per run);
    # pool waits are not connect time, so only sock_connect/sock_read are set.
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout, sock_read=read_timeout
    )
    if keep_alive:  # the lane only keeps connections alive: without, the session serves all
        connector.lane = LeanLane(
            scope,
            resolver,
            limit=max_connections,
            limit_per_host=max(0, limit_per_host),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        trust_env=False,  # HTTP(S)_PROXY and netrc from the environment are ignored
        cookie_jar=aiohttp.DummyCookieJar(),  # no cookies carried between unrelated tasks
        raise_for_status=False,
    )


class HopTimings:
    """DNS and connect seconds of one request, None when the phase did not happen (a pooled
    connection was reused). Filled by the session's own resolver, socket factory and
    connector while :meth:`active` — context variables instead of aiohttp's TraceConfig,
    which halves a session's request rate even for requests nobody times."""

    __slots__ = ("dns", "connect", "connect_started")

    def __init__(self) -> None:
        self.dns: float | None = None
        self.connect: float | None = None
        self.connect_started: float | None = None

    def active(self) -> Any:
        """Mark this request's phases until the returned token is passed to :func:`stop_timing`."""
        return _HOP.set(self)


def stop_timing(token: Any) -> None:
    _HOP.reset(token)


_HOP: ContextVar[HopTimings | None] = ContextVar("lewis_http_hop", default=None)
# The host of the request being connected: set by ScopedConnector.connect for the socket
# factory below it (the same task, or tasks it starts, which copy the context).
_PEER_HOST: ContextVar[str | None] = ContextVar("lewis_http_peer_host", default=None)


def classify_error(exc: BaseException) -> tuple[str, str]:
    """(error class, a message a person understands) for an exception from a request."""
    chain = _causes(exc)
    for link in chain:
        if isinstance(link, OutOfScope):
            return OUT_OF_SCOPE, str(link)
    for link in chain:
        if isinstance(link, InvalidInput):
            return INVALID_URL, str(link)
        if isinstance(link, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
            return INVALID_URL, f"invalid URL: {link}"
        if isinstance(link, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
            return TLS, f"TLS certificate refused: {link}"
        if isinstance(link, aiohttp.ClientSSLError | ssl.SSLError):
            return TLS, f"TLS failed: {link}"
        if isinstance(link, ConnectionRefusedError):
            return CONNECTION_REFUSED, f"connection refused: {_where(exc)}"
        if isinstance(link, asyncio.TimeoutError | TimeoutError):
            return TIMEOUT, f"timed out: {_where(exc) or link}"
        if isinstance(link, aiohttp.ClientResponseError) and "Got more than" in str(link.message):
            return TOO_LARGE, f"response headers too large: {link.message}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return CONNECTION_ERROR, f"cannot resolve {exc.host}: {exc.os_error}"
    return CONNECTION_ERROR, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain and len(chain) < 8:
        chain.append(link)
        link = link.__cause__ or (link.__context__ if not link.__suppress_context__ else None)
    return chain


def _where(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"{exc.host}:{exc.port}"
    return str(exc)


__all__ = [
    "create_session",
    "classify_error",
    "is_localhost_alias",
    "ScopedResolver",
    "ScopedConnector",
    "guarded_socket_factory",
    "HopTimings",
    "stop_timing",
    "SCHEMES",
    "TRANSIENT",
    "TIMEOUT",
    "CONNECTION_REFUSED",
    "TLS",
    "TOO_LARGE",
    "OUT_OF_SCOPE",
    "INVALID_URL",
    "INVALID_REQUEST",
    "TOO_MANY_REDIRECTS",
    "CONNECTION_ERROR",
]
