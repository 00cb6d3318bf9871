"""Loopback HTTP servers for tests and benchmarks: well-behaved, redirecting and misbehaving.

Every server runs on a background thread with its own event loop, so synchronous tests and
client code on any other loop can use them. Servers bind to loopback only (127.0.0.0/8 or
::1) — a test may bind 127.0.0.2 to sit inside or outside a narrowed scope.

``kind``s:
  app           aiohttp app: ``/``, ``/bytes/{n}``, ``/big/{n}`` (streamed), ``/status/{code}``,
                ``/redirect/{n}``, ``/to?url=..&code=..``, ``/delay/{ms}``, ``/echo``,
                ``/long/{n}`` (redirects to a Location of n characters),
                ``/flaky/{key}/{n}`` (drops the first n connections for a key)
  stall         accepts, reads, never answers
  trickle       sends headers then one body byte every ``interval`` seconds
  slow_headers  sends the status line, then one header line every ``interval`` s, forever
  huge_headers  answers with a 20 kB header line (over any client's header limit)
  sink          counts every connection it accepts (``hits["connections"]``) and every
                request on it (``hits["requests"]``), answering 200 and keeping the
                connection open: the forbidden peer of the SSRF tests

Any other aiohttp ``web.Application`` is served the same way (``start(app)``: the Kubernetes
stand-in, the webhook receiver). Tests take the ``serve`` fixture (tests/conftest.py): a
ServerThread whose servers are closed, sockets and all, when the module's tests are done.

Run standalone for a benchmark: ``python tests/support/httpservers.py --port 8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from lewis_tasks.infra.redis_server import free_port  # noqa: F401  (tests import it from here)

T = TypeVar("T")
LOOPBACK = ("127.", "::1")
PATTERN = bytes(range(256))


def body_of(n: int) -> bytes:
    """The exact bytes ``/bytes/{n}`` and ``/big/{n}`` send: a repeating 0..255 pattern."""
    reps, rest = divmod(n, len(PATTERN))
    return PATTERN * reps + PATTERN[:rest]


def sha256_of(n: int) -> str:
    return hashlib.sha256(body_of(n)).hexdigest()


@dataclass(frozen=True)
class Seen:
    """One request to ``/record/…``: when it arrived (monotonic), method, headers, body."""

    at: float
    method: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RunningServer:
    kind: str
    host: str
    port: int
    hits: Counter[str] = field(default_factory=Counter)  # connections (raw) or paths (app)
    # app: every request to /record/… as the server saw it, in arrival order
    seen: list[Seen] = field(default_factory=list)
    _closer: Any = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def build_app(server: RunningServer | None = None) -> web.Application:
    """The well-behaved server's routes; ``server.hits`` counts requests per path."""
    hits: Counter[str] = server.hits if server else Counter()
    seen: list[Seen] = server.seen if server else []
    flaky: Counter[str] = Counter()

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        hits[request.path] += 1
        response = await handler(request)
        response.headers.setdefault("Server", "lewis-test")
        return response

    async def index(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def some_bytes(request: web.Request) -> web.Response:
        return web.Response(
            body=body_of(int(request.match_info["n"])), content_type="application/octet-stream"
        )

    async def big(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        data = body_of(n)
        for start in range(0, n, 65536):
            await response.write(data[start : start + 65536])
        await response.write_eof()
        return response

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="status")

    async def redirect(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n <= 0:
            return web.Response(text="done")
        raise web.HTTPFound(f"/redirect/{n - 1}")

    async def to(request: web.Request) -> web.Response:
        code = int(request.query.get("code", "302"))
        return web.Response(status=code, headers={"Location": request.query["url"]})

    async def long_location(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        head = "/status/204?q="
        return web.Response(status=302, headers={"Location": head + "z" * (n - len(head))})

    async def delay(request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.Response(text="late")

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "headers": dict(request.headers),
                "body": body.decode("utf-8", "replace"),
            }
        )

    async def record(request: web.Request) -> web.Response:
        """Keeps what it saw in ``server.seen``; ``/record/<ms>`` answers that late."""
        arrived = time.monotonic()
        seen.append(Seen(arrived, request.method, dict(request.headers), await request.read()))
        delay_ms = request.match_info.get("ms")
        if delay_ms:
            await asyncio.sleep(int(delay_ms) / 1000)
        return web.Response(text="seen")

    async def drop_first(request: web.Request) -> web.Response:
        key, n = request.match_info["key"], int(request.match_info["n"])
        flaky[key] += 1
        if flaky[key] <= n and request.transport is not None:
            request.transport.abort()  # the client sees the connection die mid-request
        return web.Response(text=f"attempt {flaky[key]}")

    app = web.Application(middlewares=[count])
    app.router.add_get("/", index)
    app.router.add_get("/bytes/{n}", some_bytes)
    app.router.add_get("/big/{n}", big)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/redirect/{n}", redirect)
    app.router.add_route("*", "/to", to)
    app.router.add_get("/delay/{ms}", delay)
    app.router.add_get("/long/{n}", long_location)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/flaky/{key}/{n}", drop_first)
    app.router.add_route("*", "/record", record)
    app.router.add_route("*", "/record/{ms}", record)
    return app


class ServerThread:
    """A background thread running one event loop that hosts any number of servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="httpservers", daemon=True
        )
        self._thread.start()
        self.servers: list[RunningServer] = []

    def call(self, coro: Awaitable[T], timeout: float = 10.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def start(
        self,
        spec: str | web.Application = "app",
        host: str = "127.0.0.1",
        port: int = 0,
        interval: float = 1.0,
    ) -> RunningServer:
        """Serve ``spec`` — a ``kind`` above, or an aiohttp app — on ``host``:``port`` (0: a
        free port); it is closed with this thread."""
        if not host.startswith(LOOPBACK):
            raise ValueError(f"test servers bind loopback only, not {host}")
        if isinstance(spec, web.Application):
            server = self.call(_start_app(RunningServer("custom", host, port), spec))
        elif spec == "app":
            server = RunningServer("app", host, port)
            server = self.call(_start_app(server, build_app(server)))
        else:
            server = self.call(_start_raw(spec, host, port, interval))
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in self.servers:
            with suppress(Exception):
                self.call(server._closer())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@contextmanager
def serving() -> Iterator[ServerThread]:
    """A ServerThread, closed with all its servers on exit."""
    thread = ServerThread()
    try:
        yield thread
    finally:
        thread.close()


async def _start_app(server: RunningServer, app: web.Application) -> RunningServer:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, server.host, server.port)
    await site.start()
    server.port = runner.addresses[0][1]
    server._closer = runner.cleanup
    return server


async def _start_raw(kind: str, host: str, port: int, interval: float) -> RunningServer:
    handlers: set[asyncio.Task[Any]] = set()
    server = RunningServer(kind, host, port)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        server.hits["connections"] += 1
        try:
            if kind == "sink":  # counted above, at accept: a connection is already a hit
                while True:  # keep-alive, so a pooled connection's requests count too
                    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                    server.hits["requests"] += 1
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nreached")
                    await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            if kind == "stall":
                await asyncio.Event().wait()
            elif kind == "trickle":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                while True:
                    writer.write(b"x")
                    await writer.drain()
                    await asyncio.sleep(interval)
            elif kind == "slow_headers":
                writer.write(b"HTTP/1.1 200 OK\r\n")
                for i in range(1_000_000):
                    await asyncio.sleep(interval)
                    writer.write(b"X-Slow-%d: y\r\n" % i)
                    await writer.drain()
            elif kind == "huge_headers":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * 20000 + b"\r\nContent-Length: 0\r\n\r\n"
                )
                await writer.drain()
            else:
                raise ValueError(f"unknown server kind {kind!r}")
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.CancelledError,
            asyncio.LimitOverrunError,
            TimeoutError,
        ):
            pass
        finally:
            handlers.discard(task)
            writer.close()

    listener = await asyncio.start_server(handle, host, port)
    server.port = listener.sockets[0].getsockname()[1]

    async def close() -> None:
        listener.close()
        for task in list(handlers):
            task.cancel()
        if handlers:
            await asyncio.wait(list(handlers), timeout=2)
        with suppress(Exception):
            await asyncio.wait_for(listener.wait_closed(), 2)

    server._closer = close
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the test app on loopback (benchmarks).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    if not args.host.startswith(LOOPBACK):
        parser.error("loopback only")
    with suppress(ImportError):
        import uvloop

        uvloop.install()
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
