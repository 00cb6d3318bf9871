"""Stack benchmarks of the real work: scan ports/s and HTTP requests/s of the running stack.

Both go through the public producer API exactly as an operator's job would (``submit_scan``,
``submit_loadtest``), timed here from submit to the finished report, so the figure includes
planning, chunk fan-out, the merge and persistence. Targets stay on loopback: the scan probes
127.0.0.1; the load test hits ``url`` if given (it must be in scope), else a small aiohttp
server this process starts on 127.0.0.1 for the run — on a small machine that server shares
the cores with the workers, so give ``url`` of a real server (nginx) for a figure of the
client side alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from celery import Celery

from ..errors import InvalidInput

BODY = b"x" * 512  # the anchors' nginx served a 512-byte file


@dataclass(frozen=True)
class StackFigure:
    """One stack benchmark: what it did, its rate, and the details worth keeping."""

    name: str  # "scan" or "http"
    queue: str  # where the work ran
    rate_per_s: float  # ports/s or requests/s
    seconds: float
    detail: dict[str, Any]

    def metrics(self) -> dict[str, Any]:
        """As stored: the rate as ``throughput_per_s`` (charted), latency figures when known."""
        return {"throughput_per_s": self.rate_per_s, "seconds": self.seconds, **self.detail}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_scan(
    app: Celery, *, ports: str = "1-20000", target: str = "127.0.0.1", max_seconds: float
) -> StackFigure:
    """Connect-scan ``ports`` of ``target`` (no service probes); ports/s from submit to report."""
    from .scan import submit_scan

    began = time.monotonic()
    handle = submit_scan(target, ports, services=False, app=app)
    report = handle.wait(timeout=max_seconds, interval=0.05)
    seconds = time.monotonic() - began
    progress = report.progress
    return StackFigure(
        "scan",
        "io",
        progress.ports_total / seconds,
        seconds,
        {
            "ports": progress.ports_total,
            "chunks": progress.chunks_total,
            "open": progress.open_count,
            "target": target,
            "scan_id": handle.id,
        },
    )


def measure_http(
    app: Celery,
    *,
    url: str | None = None,
    concurrency: int = 100,
    duration: float = 5.0,
    workers: int = 1,
    max_seconds: float,
) -> StackFigure:
    """A closed-loop load test of ``url`` (default: a local 512-byte server) for ``duration`` s."""
    from .http import submit_loadtest

    if duration > max_seconds:
        raise InvalidInput(f"duration={duration} is over the bound max_seconds={max_seconds}")
    with _target(url) as target:
        handle = submit_loadtest(
            target, concurrency=concurrency, duration=duration, workers=workers, app=app
        )
        result = handle.wait(timeout=max_seconds + 30)
    latency = result.get("latency_ms") or {}
    return StackFigure(
        "http",
        "io",
        float(result["rps"]),
        float(result["duration_s"]),
        {
            "p50_ms": latency.get("p50_ms"),
            "p99_ms": latency.get("p99_ms"),
            "requests": result["requests"],
            "errors": sum((result.get("errors") or {}).values()),
            "concurrency": concurrency,
            "workers": workers,
            "target": url or "built-in aiohttp server in the producer",
            "loadtest_id": handle.id,
        },
    )


@contextlib.contextmanager
def _target(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    with serve_static() as port:
        yield f"http://127.0.0.1:{port}/"


@contextlib.contextmanager
def serve_static(body: bytes = BODY) -> Iterator[int]:
    """An aiohttp server answering every GET with ``body``, on 127.0.0.1, in a thread; its port."""
    from aiohttp import web

    async def answer(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    loop = asyncio.new_event_loop()
    application = web.Application()
    application.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(application, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    loop.run_until_complete(site.start())
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, name="lewis-bench-http", daemon=True)
    thread.start()
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


__all__ = ["StackFigure", "measure_http", "measure_scan", "serve_static"]
