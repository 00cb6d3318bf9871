"""The monitor's HTTP server (aiohttp): ``/metrics``, ``/``, ``/ws``, ``/api/snapshot``.

Store reads are blocking redis-py calls: they run in a thread so a slow Redis never stalls
the event loop. One broadcaster builds a frame per second and hands it to every WebSocket
client's queue of at most :data:`CLIENT_QUEUE` frames; a client that cannot keep up loses
old frames (never memory), and one whose send stalls past :data:`SEND_TIMEOUT` is closed,
so a slow or vanished browser never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from importlib import resources
from typing import Any

from aiohttp import WSMsgType, web

from .exposition import render
from .view import MonitorView

log = logging.getLogger(__name__)

CLIENT_QUEUE = 2  # frames waiting per client; older ones are dropped
SEND_TIMEOUT = 5.0  # seconds one send may take before the client is closed
MAX_CLIENTS = 64
FRAME_PERIOD = 1.0
CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"

VIEW: web.AppKey[MonitorView] = web.AppKey("view", MonitorView)
CLIENTS: web.AppKey[set[asyncio.Queue[str]]] = web.AppKey("clients")
STATS: web.AppKey[dict[str, int]] = web.AppKey("stats")


async def metrics(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    try:
        body = await asyncio.to_thread(render, view)
    except Exception as exc:  # never a 500 to the scraper: say it is stale
        log.exception("monitor: /metrics failed")
        body = (
            f"# HELP lewis_metrics_stale 1 when the metric store could not be read.\n"
            f"# TYPE lewis_metrics_stale gauge\nlewis_metrics_stale 1.0\n"
            f"# {type(exc).__name__}\n"
        ).encode()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def snapshot(request: web.Request) -> web.Response:
    frame = await asyncio.to_thread(request.app[VIEW].frame)
    return web.json_response(frame)


async def index(_: web.Request) -> web.Response:
    page = resources.files(__package__).joinpath("static/index.html").read_text()
    return web.Response(text=page, content_type="text/html")


async def websocket(request: web.Request) -> web.StreamResponse:
    clients = request.app[CLIENTS]
    if len(clients) >= MAX_CLIENTS:
        raise web.HTTPServiceUnavailable(text="too many dashboard clients")
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=CLIENT_QUEUE)
    clients.add(queue)

    async def drain_incoming() -> None:
        async for msg in ws:  # the page sends nothing; this notices a close
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break

    reader = asyncio.create_task(drain_incoming())
    try:
        while not ws.closed and not reader.done():
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            try:
                await asyncio.wait_for(ws.send_str(getter.result()), SEND_TIMEOUT)
            except (TimeoutError, ConnectionError, RuntimeError):
                request.app[STATS]["closed_slow"] += 1
                break
    finally:
        clients.discard(queue)
        reader.cancel()
        with contextlib.suppress(Exception):
            await ws.close()
    return ws


def offer(queue: asyncio.Queue[str], frame: str, stats: dict[str, int]) -> None:
    """Put ``frame`` on a client's queue, dropping its oldest frame when full."""
    while True:
        try:
            queue.put_nowait(frame)
            return
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
                stats["dropped"] += 1


async def broadcaster(app: web.Application) -> None:
    view = app[VIEW]
    while True:
        if app[CLIENTS]:
            try:
                frame = json.dumps(await asyncio.to_thread(view.frame))
            except Exception:
                log.exception("monitor: building a frame failed")
            else:
                clients: set[asyncio.Queue[str]] = app[CLIENTS]
                for queue in tuple(clients):
                    offer(queue, frame, app[STATS])
        await asyncio.sleep(FRAME_PERIOD)


async def _start_broadcaster(app: web.Application) -> Any:
    task = asyncio.create_task(broadcaster(app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_app(view: MonitorView) -> web.Application:
    app = web.Application()
    app[VIEW] = view
    app[CLIENTS] = set()
    app[STATS] = {"dropped": 0, "closed_slow": 0}
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/snapshot", snapshot)
    app.router.add_get("/ws", websocket)
    app.cleanup_ctx.append(_start_broadcaster)
    return app


async def serve(view: MonitorView, host: str, port: int, on_ready: Any = None) -> None:
    """Run until cancelled; ``on_ready(port)`` once listening (port 0 picks a free one)."""
    runner = web.AppRunner(make_app(view), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    if on_ready is not None:
        on_ready(bound)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


__all__ = ["make_app", "serve", "offer", "CLIENT_QUEUE", "SEND_TIMEOUT"]
