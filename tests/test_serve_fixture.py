"""The ``serve`` factory fixture's machinery (tests/support/httpservers.py): a kind or any
aiohttp app served on a free loopback port, and every server closed with its thread."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from aiohttp import web

from tests.support.httpservers import ServerThread, serving


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_custom_app_and_the_kinds_are_served_and_closed_with_the_thread() -> None:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="custom")

    app = web.Application()
    app.router.add_get("/", hello)
    # Given a custom app, the test app and a raw server on one thread
    with serving() as thread:
        custom, builtin, stall = thread.start(app), thread.start("app"), thread.start("stall")
        # Then each answers on its own free loopback port
        with urllib.request.urlopen(custom.url, timeout=5) as reply:
            assert reply.read() == b"custom"
        with urllib.request.urlopen(builtin.url, timeout=5) as reply:
            assert reply.read() == b"hello"
        held = socket.create_connection(("127.0.0.1", stall.port), timeout=2)
        ports = [custom.port, builtin.port, stall.port]
        assert len(set(ports)) == 3 and 0 not in ports
    # When the thread closes, every listener is gone, and a held connection is dropped
    held.settimeout(5)
    try:
        assert held.recv(1) == b""
    finally:
        held.close()
    assert all(_refused(port) for port in ports)


def test_servers_bind_loopback_only(serve: ServerThread) -> None:
    with pytest.raises(ValueError, match="loopback only"):
        serve.start("app", "0.0.0.0")
