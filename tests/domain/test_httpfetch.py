"""fetch_all against real loopback servers: answers, redirects, caps, misbehaving servers, SSRF."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import pytest

from lewis_tasks.domain.httpclient import create_session
from lewis_tasks.domain.httpfetch import (
    FetchPool,
    HttpOutcome,
    HttpRequest,
    decode_outcomes,
    encode_outcomes,
    fetch_all,
    normalise_url,
    summarise,
)
from lewis_tasks.domain.scope import Scope
from lewis_tasks.errors import InvalidInput, TransientError
from tests.support.httpservers import ServerThread, body_of, free_port

LOOPBACK = Scope.from_allow(["127.0.0.0/8"])
NARROW = Scope.from_allow(["127.0.0.2/32"])


@pytest.fixture(scope="module")
def servers(serve: ServerThread) -> ServerThread:
    serve.start("app", "127.0.0.1")
    serve.start("app", "127.0.0.2")
    serve.start("stall", "127.0.0.2")
    serve.start("trickle", "127.0.0.2", interval=0.5)
    serve.start("slow_headers", "127.0.0.2", interval=0.5)
    return serve


@pytest.fixture(scope="module")
def app1(servers: ServerThread) -> str:
    return servers.servers[0].url


@pytest.fixture(scope="module")
def app2(servers: ServerThread) -> str:
    return servers.servers[1].url


def fetch(
    requests: Sequence[Any],
    scope: Scope = LOOPBACK,
    *,
    read_timeout: float | None = 5,
    **options: Any,
) -> list[HttpOutcome]:
    settings: dict[str, Any] = {
        "concurrency": 8,
        "max_body_bytes": 1 << 20,
        "max_redirects": 5,
        "retries": 0,
        "total_timeout": 10.0,
        "backoff": 0.01,
    }
    settings.update(options)

    async def main() -> list[HttpOutcome]:
        session = create_session(
            scope,
            max_connections=20,
            limit_per_host=10,
            connect_timeout=2,
            read_timeout=read_timeout,
            keep_alive=True,
        )
        async with session:
            return await fetch_all(session, requests, **settings)

    return asyncio.run(main())


def test_answer_fields(app2: str) -> None:
    [outcome] = fetch([app2 + "/bytes/1000"])
    assert outcome.ok and outcome.status == 200 and outcome.attempts == 1
    assert outcome.bytes == 1000 and not outcome.truncated
    assert outcome.sha256 == hashlib.sha256(body_of(1000)).hexdigest()
    headers = dict(outcome.headers)
    assert headers["server"] == "lewis-test" and headers["content-length"] == "1000"
    t = outcome.timings
    assert t.connect_ms is not None and t.ttfb_ms is not None
    assert 0 <= t.connect_ms <= t.ttfb_ms + t.connect_ms <= t.total_ms + 1


def test_a_reused_connection_has_no_connect_time(app2: str) -> None:
    first, second = fetch([app2 + "/", app2 + "/"], concurrency=1)
    assert first.timings.connect_ms is not None
    assert second.timings.connect_ms is None and second.timings.ttfb_ms is not None


def test_redirect_chain_is_followed_and_recorded(app2: str) -> None:
    [outcome] = fetch([app2 + "/redirect/3"])
    assert outcome.status == 200 and outcome.final_url == app2 + "/redirect/0"
    assert [hop.status for hop in outcome.redirects] == [302, 302, 302]
    assert [hop.location for hop in outcome.redirects] == [
        "/redirect/2",
        "/redirect/1",
        "/redirect/0",
    ]


def test_redirects_are_capped(app2: str) -> None:
    [outcome] = fetch([app2 + "/redirect/10"], max_redirects=3)
    assert outcome.error == "too_many_redirects" and len(outcome.redirects) == 4


def test_body_cap_truncates_and_flags(app2: str) -> None:
    [big, small] = fetch([app2 + "/big/300000", app2 + "/bytes/100"], max_body_bytes=100_000)
    assert big.ok and big.truncated and big.bytes == 100_000
    assert big.sha256 == hashlib.sha256(body_of(300_000)[:100_000]).hexdigest()
    assert small.bytes == 100 and not small.truncated


def test_head_and_post(app2: str) -> None:
    head, post = fetch(
        [
            {"url": app2 + "/bytes/50", "method": "head"},
            {"url": app2 + "/echo", "method": "POST", "body": "ping", "headers": {"X-Probe": "1"}},
        ]
    )
    assert head.status == 200 and head.bytes == 0 and head.method == "HEAD"
    assert post.status == 200 and post.method == "POST"
    # the echo server's JSON carries what it received; its hash proves the body made it
    assert post.bytes > 0 and dict(post.headers)["content-type"].startswith("application/json")


def test_303_turns_post_into_get(app2: str) -> None:
    [outcome] = fetch(
        [{"url": f"{app2}/to?code=303&url=/status/201", "method": "POST", "body": "x"}]
    )
    assert outcome.status == 201 and outcome.redirects[0].status == 303


@pytest.mark.parametrize("read_timeout", [1.0, None])
def test_misbehaving_servers_time_out_within_budget_and_the_batch_goes_on(
    servers: ServerThread, app2: str, read_timeout: float | None
) -> None:
    stall, trickle, slow = (s.url for s in servers.servers[2:5])
    # a read timeout of 1 s never fires on a server that sends something every 0.5 s (and
    # None never fires at all): only the per-URL budget (2 s) stops them
    outcomes = fetch(
        [stall + "/", trickle + "/", slow + "/", app2 + "/"],
        read_timeout=read_timeout,
        total_timeout=2.0,
    )
    assert [o.error for o in outcomes] == ["timeout", "timeout", "timeout", None]
    assert outcomes[1].message == "no complete answer within 2 s"
    assert outcomes[2].message == "no complete answer within 2 s"
    assert outcomes[3].status == 200


def test_loop_and_session_stay_usable_after_timeouts(servers: ServerThread, app2: str) -> None:
    stall = servers.servers[2].url

    async def main() -> list[HttpOutcome]:
        session = create_session(
            LOOPBACK,
            max_connections=2,
            limit_per_host=2,
            connect_timeout=1,
            read_timeout=5,
            keep_alive=True,
        )
        async with session:
            options: dict[str, Any] = {
                "concurrency": 2,
                "max_body_bytes": 1000,
                "max_redirects": 0,
                "retries": 0,
            }
            first = await fetch_all(
                session, [stall + "/a", stall + "/b"], total_timeout=0.5, **options
            )
            # both pool slots were busy with the stalled requests; they must be free again
            second = await fetch_all(session, [app2 + "/", app2 + "/"], total_timeout=5, **options)
            return first + second

    assert [o.error or o.status for o in asyncio.run(main())] == ["timeout", "timeout", 200, 200]


def test_transient_failures_are_retried_for_idempotent_methods_only(
    servers: ServerThread, app2: str
) -> None:
    # (aiohttp itself resends an idempotent request once when the connection drops, so the
    # server may see more tries than `attempts`, which counts ours)
    [retried] = fetch([app2 + "/flaky/a/2"], retries=2)
    assert retried.status == 200 and retried.attempts in (2, 3)
    [exhausted] = fetch([app2 + "/flaky/b/50"], retries=2)
    assert exhausted.error == "connection_error" and exhausted.attempts == 3
    [post] = fetch([{"url": app2 + "/flaky/c/1", "method": "POST", "body": "x"}], retries=2)
    assert post.error == "connection_error" and post.attempts == 1
    assert servers.servers[1].hits["/flaky/c/1"] == 1


def test_refused_connection(app2: str) -> None:
    [outcome] = fetch([f"http://127.0.0.2:{free_port('127.0.0.2')}/"], retries=1)
    assert outcome.error == "connection_refused" and outcome.attempts == 2


@pytest.mark.parametrize(
    "bad, error",
    [
        ("not a url", "invalid_url"),
        ("ftp://127.0.0.2/", "invalid_url"),
        ("file:///etc/passwd", "invalid_url"),
        ("gopher://127.0.0.2:70/", "invalid_url"),
        ("http://", "invalid_url"),
        ("http://a b/", "invalid_url"),
        ("http://[::1/", "invalid_url"),
        ({"url": "http://127.0.0.2/", "method": "DELETE"}, "invalid_request"),
        ({"url": "http://127.0.0.2/", "headers": {"X\r\nY": "1"}}, "invalid_request"),
    ],
)
def test_malformed_requests_are_per_url_errors(app2: str, bad: Any, error: str) -> None:
    outcomes = fetch([bad, app2 + "/"])
    assert outcomes[0].error == error and outcomes[0].message
    assert outcomes[1].status == 200


SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0x7f000001",
    "127.1",
    "[::ffff:127.0.0.1]",
    "localhost",
    "LOCALHOST.",
    "localhost.localdomain",
]


@pytest.mark.parametrize("host", SPELLINGS)
def test_out_of_scope_by_any_spelling(servers: ServerThread, host: str) -> None:
    target = servers.servers[0]
    before = sum(target.hits.values())
    [outcome] = fetch([f"http://{host}:{target.port}/"], NARROW)
    assert outcome.error == "out_of_scope", outcome.message
    assert sum(target.hits.values()) == before


@pytest.mark.parametrize("host", SPELLINGS)
def test_redirect_out_of_scope_is_refused_at_the_hop(
    servers: ServerThread, app2: str, host: str
) -> None:
    target = servers.servers[0]
    before = sum(target.hits.values())
    refused, allowed = fetch(
        [f"{app2}/to?url=http://{host}:{target.port}/", f"{app2}/to?url={app2}/status/204"], NARROW
    )
    assert refused.error == "out_of_scope", refused.message
    assert [hop.status for hop in refused.redirects] == [302]
    assert sum(target.hits.values()) == before
    assert allowed.status == 204 and allowed.final_url == app2 + "/status/204"


def test_redirect_to_another_scheme_is_refused(app2: str) -> None:
    [outcome] = fetch([f"{app2}/to?url=file:///etc/passwd"])
    assert outcome.error == "invalid_url" and "file://" in (outcome.message or "")


def test_progress_callback_order_and_json(app2: str) -> None:
    seen: list[int] = []
    urls = [f"{app2}/bytes/{n}" for n in range(30)]
    outcomes = fetch(urls, on_result=lambda o: seen.append(o.index), concurrency=4)
    assert sorted(seen) == list(range(30))
    assert [o.index for o in outcomes] == list(range(30))
    assert [o.bytes for o in outcomes] == list(range(30))
    data = json.loads(json.dumps([o.to_dict() for o in outcomes]))
    assert data[5]["sha256"] == hashlib.sha256(body_of(5)).hexdigest()
    assert summarise(outcomes) == {"total": 30, "ok": 30, "statuses": {"200": 30}, "errors": {}}


def test_a_failing_progress_callback_fails_the_batch_with_its_own_error(app2: str) -> None:
    def broken(outcome: HttpOutcome) -> None:
        raise TransientError("progress store unavailable")

    with pytest.raises(TransientError, match="progress store"):
        fetch([app2 + "/", app2 + "/"], on_result=broken)


def test_outcomes_travel_as_json_and_come_back_equal(app2: str) -> None:
    # Given outcomes of every shape: an answer with headers, a redirect chain, a truncated
    # body, a POST, a refused connection and a malformed URL
    outcomes = fetch(
        [
            app2 + "/bytes/100",
            app2 + "/redirect/2",
            app2 + "/big/3000",
            {"url": app2 + "/echo", "method": "POST", "body": "hi"},
            f"http://127.0.0.2:{free_port('127.0.0.2')}/",
            "not a url",
        ],
        max_body_bytes=1000,
    )
    assert outcomes[1].redirects and outcomes[2].truncated and outcomes[4].error
    # When they are shipped as text and read back
    text = encode_outcomes(outcomes)
    # Then the text is plain JSON and every outcome comes back equal, nested types included
    assert json.loads(text)["outcomes"][0][1] == app2 + "/bytes/100"
    back = decode_outcomes(text)
    assert back == outcomes
    assert type(back[1].redirects[0]).__name__ == "RedirectHop" and back[0].timings.total_ms > 0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "not JSON"),
        ('{"outcomes": 3}', "list of outcomes"),
        ('{"schema": {"outcome": ["index"]}, "outcomes": []}', "another version"),
    ],
)
def test_shipped_outcomes_that_are_not_ours_are_refused_with_the_reason(
    text: str, match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        decode_outcomes(text)


def test_a_malformed_shipped_outcome_is_named() -> None:
    good = json.loads(encode_outcomes([HttpOutcome(0, "http://127.0.0.1/", "GET", status=200)]))
    bad = dict(
        good,
        outcomes=[
            *good["outcomes"],
            [1, "short"],
        ],
    )
    with pytest.raises(InvalidInput, match="outcome 1 is malformed: 2 fields"):
        decode_outcomes(json.dumps(bad))
    negative = dict(good, outcomes=[[-1, *good["outcomes"][0][1:]]])
    with pytest.raises(InvalidInput, match="outcome 0 is malformed: index -1"):
        decode_outcomes(json.dumps(negative))


def test_request_parsing() -> None:
    assert str(normalise_url("http://0x7f000001:8/x")) == "http://127.0.0.1:8/x"
    assert str(normalise_url("http://[::ffff:127.0.0.1]/")) == "http://127.0.0.1/"
    request = HttpRequest.parse({"url": "http://127.1/", "method": "post", "body": "é"})
    assert (request.url, request.method, request.body) == (
        "http://127.0.0.1/",
        "POST",
        "é".encode(),
    )
    with pytest.raises(InvalidInput, match="PATCH"):
        HttpRequest.parse({"url": "http://127.0.0.1/", "method": "PATCH"})
    with pytest.raises(InvalidInput, match="ftp://"):
        HttpRequest.parse("ftp://127.0.0.1/")
    with pytest.raises(InvalidInput, match="GET request carries no body"):
        HttpRequest.parse({"url": "http://127.0.0.1/", "body": "x"})


def test_bad_batch_options_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="concurrency"):
        fetch(["http://127.0.0.1/"], concurrency=0)


# --- one pool shared by several batches (a worker process's chunks) -------------------------


async def _counting_server() -> tuple[Any, str, dict[str, int]]:
    """An in-loop server whose /slow answers after 20 ms and /stall never; it counts requests
    in flight and their peak."""
    from aiohttp import web

    seen = {"now": 0, "peak": 0}

    async def slow(_: web.Request) -> web.Response:
        seen["now"] += 1
        seen["peak"] = max(seen["peak"], seen["now"])
        try:
            await asyncio.sleep(0.02)
        finally:
            seen["now"] -= 1
        return web.Response(text="ok")

    async def stall(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/stall", stall)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    port = free_port("127.0.0.1")
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}", seen


def test_a_pool_shares_its_fetchers_between_batches_first_come_first_served() -> None:
    from lewis_tasks.domain.httpfetch import FetchPool

    async def main() -> tuple[int, list[str]]:
        runner, base, seen = await _counting_server()
        session = create_session(
            LOOPBACK,
            max_connections=50,
            limit_per_host=0,
            connect_timeout=2,
            read_timeout=5,
            keep_alive=True,
        )
        finished: list[str] = []
        try:
            async with session:
                pool = FetchPool(
                    session, concurrency=4, max_body_bytes=1000, max_redirects=0, retries=0
                )

                async def batch(name: str) -> list[HttpOutcome]:
                    outcomes = await pool.fetch([base + "/slow"] * 12, total_timeout=5)
                    finished.append(name)
                    return outcomes

                a, b = await asyncio.gather(batch("a"), batch("b"))
                assert [o.status for o in a + b] == [200] * 24
                assert pool.queued == 0
        finally:
            await runner.cleanup()
        return seen["peak"], finished

    peak, finished = asyncio.run(main())
    assert peak == 4  # the pool's concurrency, not 4 per batch, and all of it used
    assert finished == ["a", "b"]  # queued in arrival order: the first batch ends first


def test_cancelling_one_batch_frees_the_pool_for_the_next() -> None:
    from lewis_tasks.domain.httpfetch import FetchPool

    async def main() -> list[HttpOutcome]:
        runner, base, _ = await _counting_server()
        session = create_session(
            LOOPBACK,
            max_connections=50,
            limit_per_host=0,
            connect_timeout=2,
            read_timeout=None,
            keep_alive=True,
        )
        try:
            async with session:
                pool = FetchPool(
                    session, concurrency=2, max_body_bytes=1000, max_redirects=0, retries=0
                )
                stalled = asyncio.create_task(pool.fetch([base + "/stall"] * 6, total_timeout=600))
                await asyncio.sleep(0.2)  # both fetchers now wait on the stalling server
                following = asyncio.create_task(pool.fetch([base + "/slow"] * 3, total_timeout=600))
                stalled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await stalled
                # without the cancel this would wait out the 600 s budgets of six stalls
                return await asyncio.wait_for(following, 30)
        finally:
            await runner.cleanup()

    assert [o.status for o in asyncio.run(main())] == [200, 200, 200]


def test_a_failing_progress_callback_fails_that_batch_only(app2: str) -> None:
    from lewis_tasks.domain.httpfetch import FetchPool

    def boom(_: HttpOutcome) -> None:
        raise RuntimeError("progress sink broke")

    async def main() -> list[HttpOutcome]:
        session = create_session(
            LOOPBACK,
            max_connections=10,
            limit_per_host=0,
            connect_timeout=2,
            read_timeout=5,
            keep_alive=True,
        )
        async with session:
            pool = FetchPool(
                session, concurrency=2, max_body_bytes=1000, max_redirects=0, retries=0
            )
            with pytest.raises(RuntimeError, match="progress sink broke"):
                await pool.fetch([app2 + "/"] * 4, total_timeout=5, on_result=boom)
            return await pool.fetch([app2 + "/"] * 3, total_timeout=5)

    assert [o.status for o in asyncio.run(main())] == [200, 200, 200]


# --- bad input is a per-URL outcome at once (issue 12, items 4 and 10) ---------------------


def test_a_body_that_cannot_be_encoded_is_invalid_request_at_once(app2: str) -> None:
    # Given a POST whose body holds a lone surrogate (no UTF-8 bytes say it), beside a good one
    bad = {"url": app2 + "/echo", "method": "POST", "body": "caf\udce9"}
    good = {"url": app2 + "/echo", "method": "POST", "body": "café"}
    # When the batch runs with a long budget
    refused, answered = fetch([bad, good], total_timeout=30.0)
    # Then the bad one is refused without a request and well inside its budget
    assert refused.error == "invalid_request" and refused.attempts == 0
    assert refused.message == "the body is not encodable text: surrogates not allowed at position 3"
    assert refused.timings.total_ms == 0.0
    assert answered.status == 200 and answered.bytes > 0


@pytest.mark.parametrize("header", [{"X-Bad": "a\udcffb"}, {"X-\udcff": "v"}, {"X-Bäd": "v"}])
def test_headers_that_cannot_be_sent_are_invalid_request(app2: str, header: dict[str, str]) -> None:
    [outcome] = fetch([{"url": app2 + "/echo", "headers": header}])
    assert (outcome.error, outcome.attempts) == ("invalid_request", 0)
    assert "is malformed" in (outcome.message or "")


def test_a_url_over_the_length_cap_is_invalid_url(app2: str) -> None:
    base = app2 + "/status/204?q="
    at_cap = base + "x" * (300 - len(base))
    over = at_cap + "y"
    # a cap of 300 characters: exactly 300 is fetched, 301 is refused before any request
    fits, refused = fetch([at_cap, over], max_url_length=300)
    assert fits.status == 204
    assert (refused.error, refused.attempts) == ("invalid_url", 0)
    assert refused.message == "the URL is 301 characters long, over the cap of 300"
    assert refused.url == over[:300] + "…"  # the stored text stays within the cap


def test_a_redirect_over_the_length_cap_is_invalid_url(app2: str) -> None:
    # Given redirects to relative Locations that make URLs just within and just over the cap
    fits_at = 300 - len(app2)
    fits, refused = fetch(
        [f"{app2}/long/{fits_at}", f"{app2}/long/{fits_at + 1}"], max_url_length=300
    )
    # Then the one within is followed, and the one over is refused at the hop
    assert fits.status == 204 and len(fits.final_url or "") == 300
    assert refused.error == "invalid_url" and refused.status is None
    assert refused.message is not None
    assert refused.message.endswith("the URL is 301 characters long, over the cap of 300")
    assert len(refused.redirects[0].location) == fits_at + 1


def test_the_default_url_length_cap_is_8_kib() -> None:
    assert FetchPool.__init__.__kwdefaults__["max_url_length"] == 8192  # type: ignore[index]
    with pytest.raises(InvalidInput, match="max_url_length must be ≥ 1, not 0"):
        fetch(["http://127.0.0.2/"], max_url_length=0)


def test_credentials_in_urls_are_masked_in_outcomes(app2: str) -> None:
    # Given URLs that carry a password, a bare token, and a redirect that hands one on
    host = app2.removeprefix("http://")
    urls = [
        f"http://alice:s3cr3t-pw@{host}/status/200",
        f"http://t0ken-xyz@{host}/redirect/1",
        f"{app2}/to?url={quote(f'http://bob:hunter22@{host}/status/201')}",
        f"http://carol:pa55word@{host}:bad/",
    ]
    outcomes = fetch(urls)
    # Then no secret survives in anything an outcome would store or print
    shown = json.dumps([o.to_dict() for o in outcomes])
    for secret in ("s3cr3t-pw", "t0ken-xyz", "hunter22", "pa55word"):
        assert secret not in shown
    assert outcomes[0].url == f"http://alice:***@{host}/status/200" and outcomes[0].status == 200
    assert outcomes[1].url == f"http://***@{host}/redirect/1"
    assert outcomes[1].final_url == f"http://***@{host}/redirect/0"  # same origin: still sent
    assert outcomes[2].redirects[0].location == f"http://bob:***@{host}/status/201"
    assert outcomes[2].final_url == f"http://bob:***@{host}/status/201"
    assert outcomes[3].error == "invalid_url" and outcomes[3].url.startswith("http://carol:***@")


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.2:1\\\\@127.0.0.1:2/",  # \\ ends the authority for a browser
        "/\\\\127.0.0.1:2/",  # path-absolute to yarl, a new authority to a browser
        "\\\\\\\\127.0.0.1:2/",
        "http://127%251:2/",
        "http://127.0.0.1%252e.evil.test:2/",
        "http://ex%2541mple.test/",
        "http://1.2.3.4.5/",
        "http://0x100000000/",
    ],
)
def test_a_redirect_whose_host_two_parsers_read_differently_is_refused(
    servers: ServerThread, app2: str, location: str
) -> None:
    target = servers.servers[0]
    before = sum(target.hits.values())
    [outcome] = fetch([f"{app2}/to?url={location}"])  # the default scope: 127/8 allowed
    assert outcome.error == "invalid_url", (outcome.error, outcome.message)
    assert outcome.message is not None and outcome.message.startswith("redirect to ")
    assert outcome.status is None and len(outcome.redirects) == 1
    assert sum(target.hits.values()) == before
