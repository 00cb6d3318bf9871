"""The batch fetcher's lean lane against real loopback servers: it answers what the session
answers, byte for byte and error for error; it keeps the scope; it keeps its limits."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from yarl import URL

from lewis_tasks.domain import httpclient as hc
from lewis_tasks.domain.httpclient import ScopedResolver, create_session
from lewis_tasks.domain.httpfetch import HttpOutcome, fetch_all
from lewis_tasks.domain.httplane import LeanLane
from lewis_tasks.domain.scope import Scope
from lewis_tasks.errors import OutOfScope
from tests.support.httpservers import ServerThread
from tests.support.resolvers import LyingResolver

LOOPBACK = Scope.from_allow(["127.0.0.0/8"])


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


BODY = b"lane " * 300
# path → (raw answer, close the connection after it)
CANNED: dict[str, tuple[bytes, bool]] = {
    "/length": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        False,
    ),
    "/chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: canned\r\n\r\n"
        + _chunked(b"abc", b"defgh" * 100),
        False,
    ),
    "/gzip": (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(_gz(BODY))
        + _gz(BODY),
        False,
    ),
    "/deflate-chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n"
        + _chunked(zlib.compress(BODY)),
        False,
    ),
    "/gzip-broken": (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 12\r\n\r\nnot gzip!!!!",
        False,
    ),
    "/until-close": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread me to the end",
        True,
    ),
    "/http10": (b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nten", True),
    "/close-header": (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", True),
    "/no-content": (b"HTTP/1.1 204 No Content\r\nServer: canned\r\n\r\n", False),
    "/not-modified": (
        b'HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: "x"\r\n\r\n',
        False,
    ),
    "/continue": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        False,
    ),
    "/big": (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"b" * 5000, False),
    "/redirect": (b"HTTP/1.1 302 Found\r\nLocation: /length\r\nContent-Length: 0\r\n\r\n", False),
    "/bad-location": (
        b"HTTP/1.1 302 Found\r\nLocation: http://[bad\r\nContent-Length: 0\r\n\r\n",
        False,
    ),
    "/repeated": (
        b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\ncache-control: private\r\n"
        b"Content-Length: 0\r\n\r\n",
        False,
    ),
    "/huge-header": (b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * 20000 + b"\r\n\r\n", True),
    "/bad-status": (b"HTTP/1.1 abc nope\r\n\r\n", True),
    "/short": (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", True),
    "/hang-up": (b"", True),
}


async def _canned_server() -> tuple[asyncio.AbstractServer, str, list[str]]:
    """Answers each request with its path's canned bytes; returns the server, its base URL and
    every request head it read, in order."""
    heads: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                heads.append(head)
                path = head.split(" ", 2)[1]
                answer, close = CANNED[path]
                writer.write(answer)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", heads


def _session(scope: Scope = LOOPBACK, **options: Any) -> aiohttp.ClientSession:
    settings: dict[str, Any] = {
        "max_connections": 20,
        "limit_per_host": 10,
        "connect_timeout": 2,
        "read_timeout": 5,
        "keep_alive": True,
    }
    settings.update(options)
    return create_session(scope, **settings)


async def _fetch(
    session: aiohttp.ClientSession, requests: list[Any], **options: Any
) -> list[HttpOutcome]:
    settings: dict[str, Any] = {
        "concurrency": 1,
        "max_body_bytes": 1000,
        "max_redirects": 3,
        "retries": 0,
        "total_timeout": 5.0,
    }
    settings.update(options)
    return await fetch_all(session, requests, **settings)


def _without_timings(outcome: HttpOutcome) -> HttpOutcome:
    return outcome._replace(timings=None)


def test_the_lane_answers_what_the_session_answers() -> None:
    requests: list[Any] = [
        *(f"PATH{p}" for p in CANNED),
        {"url": "PATH/length", "method": "HEAD"},
        {
            "url": "PATH/length",
            "headers": {"X-One": "1", "accept": "text/html", "User-Agent": "me"},
        },
        {"url": "PATH/length", "headers": {"Host": "example.test", "X-Two": "zwei ü"}},
    ]

    async def main() -> tuple[list[HttpOutcome], list[HttpOutcome], int, list[str], list[str]]:
        server, base, heads = await _canned_server()
        batch = [
            r.replace("PATH", base)
            if isinstance(r, str)
            else {**r, "url": r["url"].replace("PATH", base)}
            for r in requests
        ]
        async with server:
            async with _session() as lean:
                lane = lean.connector.lane  # type: ignore[union-attr]
                through_lane = await _fetch(lean, batch)
                served = lane.served
            lane_heads = heads[:]
            heads.clear()
            async with _session() as plain:
                plain.connector.lane = None  # type: ignore[union-attr]
                through_session = await _fetch(plain, batch)
        return through_lane, through_session, served, lane_heads, heads

    lane, session, served, lane_heads, session_heads = asyncio.run(main())
    # Then every request went through the lane (redirects' hops too) ...
    # (+1: the redirect's second hop; +1: the hang-up is sent twice, as the session does)
    assert served == len(lane_heads) == len(requests) + 2, (served, len(lane_heads))
    # ... and each outcome is the session's, field for field, errors and messages included
    for ours, theirs in zip(lane, session, strict=True):
        assert _without_timings(ours) == _without_timings(theirs), (ours, theirs)
    by_path = {o.url.split(":", 2)[2].split("/", 1)[1]: o for o in lane if o.method == "GET"}
    assert by_path["gzip"].sha256 == by_path["deflate-chunked"].sha256  # inflated: the same text
    assert by_path["big"].truncated and by_path["big"].bytes == 1000
    assert {
        by_path[p].error for p in ("huge-header", "bad-status", "short", "hang-up", "gzip-broken")
    } <= {
        hc.TOO_LARGE,
        hc.CONNECTION_ERROR,
    }
    assert by_path["huge-header"].error == hc.TOO_LARGE
    # And the server read the same request heads from both
    assert sorted(lane_heads) == sorted(session_heads)


def test_the_lane_takes_only_plain_http_gets_and_heads() -> None:
    lane = LeanLane(LOOPBACK, None, limit=1, limit_per_host=0, connect_timeout=1, read_timeout=1)
    http, https = URL("http://127.0.0.1/"), URL("https://127.0.0.1/")
    assert lane.serves(http, "GET", None) and lane.serves(http, "HEAD", None)
    assert not lane.serves(http, "POST", b"x") and not lane.serves(https, "GET", None)
    assert not lane.serves(http, "DELETE", None)


def test_posts_and_gets_share_a_batch_on_their_own_paths(serve: ServerThread) -> None:
    app = serve.start("app", "127.0.0.1")

    async def main() -> tuple[list[HttpOutcome], int]:
        async with _session() as session:
            outcomes = await _fetch(
                session,
                [app.url + "/echo", {"url": app.url + "/echo", "method": "POST", "body": "hi"}],
            )
            return outcomes, session.connector.lane.served  # type: ignore[union-attr]

    (get, post), served = asyncio.run(main())
    assert get.status == post.status == 200 and served == 1


# --- the scope --------------------------------------------------------------------------------


def _run(scope: Scope, use: Callable[[aiohttp.ClientSession], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with _session(scope) as session:
            return await use(session)

    return asyncio.run(main())


def test_a_name_vouches_for_its_own_requests_only_on_the_lane(serve: ServerThread) -> None:
    # Given a scope naming localhost but allowing only 127.0.0.2 by address, and a server on
    # 127.0.0.1 that only the name reaches
    target = serve.start("app", "127.0.0.1")
    scope = Scope.from_allow(["127.0.0.2/32", "localhost"])
    port = target.port
    urls = [
        f"http://localhost:{port}/",
        f"http://127.0.0.1:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        f"http://127.1:{port}/",
        f"http://localhost:{port}/",
    ]
    before = sum(target.hits.values())

    async def use(session: aiohttp.ClientSession) -> tuple[list[HttpOutcome], int]:
        outcomes = await _fetch(session, urls)
        return outcomes, session.connector.lane.served  # type: ignore[union-attr]

    (first, *literals, again), served = _run(scope, use)
    # When the name is fetched (its connection kept alive), then the address it reached is asked
    # for by literal spellings: the name is answered both times, every literal refused
    assert first.status == again.status == 200 and served == 2
    assert [o.error for o in literals] == [hc.OUT_OF_SCOPE] * 3, literals
    assert "127.0.0.1 is out of scope: not in the allowlist 127.0.0.2/32" in (
        literals[0].message or ""
    )
    assert sum(target.hits.values()) == before + 2


@pytest.mark.parametrize("answers", [["0.0.0.0"], ["::"], ["224.0.0.1"], ["0.0.0.0", "::"]])
def test_the_lane_refuses_never_allowed_peers_whatever_names_them(
    serve: ServerThread, answers: list[str]
) -> None:
    # Given a resolver that is no guard at all, answering never-allowed addresses for a name the
    # allowlist names: only the lane's own check before each socket stands in the way
    target = serve.start("app", "127.0.0.1")

    scope = Scope.from_allow(["0.0.0.0/0", "::/0", "*.lab.test"])
    before = sum(target.hits.values())

    async def main() -> str:
        lane = LeanLane(
            scope,
            LyingResolver(answers),
            limit=4,
            limit_per_host=0,
            connect_timeout=2,
            read_timeout=2,
        )
        try:
            await lane.request("GET", URL(f"http://db.lab.test:{target.port}/"), None)
        except OutOfScope as exc:
            assert lane.connections == 0  # the slot taken to connect is given back
            return str(exc)
        finally:
            await lane.close()
        return "fetched"

    message = asyncio.run(main())
    assert message.startswith(f"{answers[0]} is out of scope: ") and message.endswith(
        "es are never allowed"
    ), message
    assert sum(target.hits.values()) == before


def test_an_out_of_scope_literal_is_refused_before_the_pool() -> None:
    async def main() -> tuple[str, int]:
        lane = LeanLane(
            Scope.from_allow(["127.0.0.2/32"]),
            ScopedResolver(Scope.from_allow(["127.0.0.2/32"])),
            limit=4,
            limit_per_host=0,
            connect_timeout=2,
            read_timeout=2,
        )
        try:
            await lane.request("GET", URL("http://127.0.0.1:9/"), None)
        except OutOfScope as exc:
            return str(exc), lane.connections
        finally:
            await lane.close()
        return "fetched", 0

    message, open_ = asyncio.run(main())
    assert message.startswith("127.0.0.1 is out of scope") and open_ == 0


# --- limits, keep-alive, cancellation --------------------------------------------------------


async def _counting_server(delay: float) -> tuple[asyncio.AbstractServer, str, dict[str, int]]:
    """Keep-alive answers after ``delay`` s; counts connections open now, at most, and in all."""
    seen = {"now": 0, "peak": 0, "total": 0, "requests": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["now"] += 1
        seen["total"] += 1
        seen["peak"] = max(seen["peak"], seen["now"])
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                seen["requests"] += 1
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            seen["now"] -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen


def test_the_lane_keeps_limit_per_host_and_reuses_its_connections() -> None:
    async def main() -> tuple[list[HttpOutcome], dict[str, int], int]:
        server, base, seen = await _counting_server(0.02)
        async with server, _session(limit_per_host=3) as session:
            outcomes = await _fetch(session, [base + "/"] * 30, concurrency=10)
            return outcomes, dict(seen), session.connector.lane.connections  # type: ignore[union-attr]

    outcomes, seen, kept = asyncio.run(main())
    assert all(o.status == 200 for o in outcomes)
    assert seen["peak"] == 3 and seen["total"] == 3 and seen["requests"] == 30, seen
    assert kept == 3  # kept alive, idle


def test_the_lane_keeps_its_total_limit_by_closing_idle_connections_of_other_hosts() -> None:
    async def main() -> tuple[dict[str, int], dict[str, int], int]:
        one, base1, seen1 = await _counting_server(0.0)
        two, base2, seen2 = await _counting_server(0.0)
        async with one, two, _session(max_connections=2, limit_per_host=0) as session:
            await _fetch(session, [base1 + "/"] * 4, concurrency=2)
            await _fetch(session, [base2 + "/"] * 4, concurrency=2)
            await asyncio.sleep(0.05)
            return dict(seen1), dict(seen2), session.connector.lane.connections  # type: ignore[union-attr]

    seen1, seen2, kept = asyncio.run(main())
    assert seen1["now"] == 0 and seen1["total"] == 2  # closed to make room for the second host
    assert seen2["peak"] == 2 and kept == 2


def test_a_request_waiting_for_room_gets_it_when_another_host_goes_idle() -> None:
    # Given one connection in all, and two hosts asked for at once: each request to one host
    # waits for the other's connection to go idle and be closed for it (not for the keepalive)
    async def main() -> tuple[list[HttpOutcome], dict[str, int], dict[str, int]]:
        one, base1, seen1 = await _counting_server(0.01)
        two, base2, seen2 = await _counting_server(0.01)
        async with one, two, _session(max_connections=1, limit_per_host=0) as session:
            outcomes = await _fetch(
                session, [base1 + "/", base2 + "/"] * 3, concurrency=2, total_timeout=3.0
            )
            return outcomes, dict(seen1), dict(seen2)

    outcomes, seen1, seen2 = asyncio.run(main())
    assert [o.status for o in outcomes] == [200] * 6, outcomes
    assert seen1["peak"] == seen2["peak"] == 1 and seen1["requests"] == seen2["requests"] == 3


@pytest.mark.parametrize("reusable", [True, False])
def test_a_waiting_request_cancelled_as_its_turn_came_passes_the_turn_on(reusable: bool) -> None:
    # Given one connection per host, held, and two requests waiting for it
    async def main() -> int:
        server, base, seen = await _counting_server(0.0)
        async with server:
            lane = LeanLane(
                LOOPBACK,
                ScopedResolver(LOOPBACK),
                limit=10,
                limit_per_host=1,
                connect_timeout=2,
                read_timeout=2,
            )
            try:
                held = await lane.request("GET", URL(base + "/"), None)
                await held.read()
                first = asyncio.create_task(lane.request("GET", URL(base + "/"), None))
                second = asyncio.create_task(lane.request("GET", URL(base + "/"), None))
                await asyncio.sleep(0.01)  # both wait now
                # When the connection comes back (or is closed) and the first waiter is
                # cancelled before it could take its turn
                held.release(reusable=reusable)
                first.cancel()
                # Then the second gets the connection, or the room to open one
                answer = await asyncio.wait_for(second, 2)
                await answer.read()
                answer.release()
                return answer.status
            finally:
                await lane.close()

    assert asyncio.run(main()) == 200


def test_idle_connections_close_after_the_keepalive() -> None:
    async def main() -> tuple[int, int, dict[str, int]]:
        server, base, seen = await _counting_server(0.0)
        async with server, _session() as session:
            lane = session.connector.lane  # type: ignore[union-attr]
            lane.keepalive = 0.1
            await _fetch(session, [base + "/"] * 3)
            kept = lane.connections
            await asyncio.sleep(0.4)
            return kept, lane.connections, dict(seen)

    kept, after, seen = asyncio.run(main())
    assert kept == 1 and after == 0 and seen["now"] == 0 and seen["total"] == 1


def test_a_request_ended_by_its_budget_closes_its_connection_and_the_lane_goes_on(
    serve: ServerThread,
) -> None:
    stall = serve.start("trickle", "127.0.0.1", interval=0.05)

    async def main() -> tuple[list[HttpOutcome], int, list[HttpOutcome], int]:
        server, base, seen = await _counting_server(0.0)
        async with server, _session(limit_per_host=1) as session:
            lane = session.connector.lane  # type: ignore[union-attr]
            slow = await _fetch(session, [stall.url + "/"] * 2, total_timeout=0.3, concurrency=2)
            left = lane.connections
            fine = await _fetch(session, [base + "/"] * 2)
            return slow, left, fine, lane.connections

    slow, left, fine, after = asyncio.run(main())
    assert [o.error for o in slow] == [hc.TIMEOUT, hc.TIMEOUT]
    assert left == 0  # both closed: a cut-off answer leaves a connection no one can reuse
    assert [o.status for o in fine] == [200, 200] and after == 1


def test_a_closed_lane_refuses_new_requests_and_keeps_nothing_open() -> None:
    async def main() -> tuple[int, str]:
        server, base, seen = await _counting_server(0.0)
        async with server:
            session = _session()
            lane = session.connector.lane  # type: ignore[union-attr]
            await _fetch(session, [base + "/"])
            await session.close()
            try:
                await lane.request("GET", URL(base + "/"), None)
            except aiohttp.ClientConnectionError as exc:
                return lane.connections, str(exc)
        return -1, "fetched"

    open_, message = asyncio.run(main())
    assert open_ == 0 and "closed" in message


def test_without_keep_alive_every_request_takes_the_session() -> None:
    async def main() -> tuple[list[HttpOutcome], Any]:
        server, base, seen = await _counting_server(0.0)
        async with server, _session(keep_alive=False) as session:
            return await _fetch(session, [base + "/"] * 2), session.connector.lane  # type: ignore[union-attr]

    outcomes, lane = asyncio.run(main())
    assert [o.status for o in outcomes] == [200, 200] and lane is None
