"""run_loadtest against real loopback servers: counts, open-loop latency, caps, merging.

Latency assertions are lower bounds that follow from the schedule and the server's injected
delay, so a slow machine can only make them hold more easily.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from lewis_tasks.domain.histogram import MAX_RELATIVE_ERROR, LatencyHistogram
from lewis_tasks.domain.httpclient import create_session
from lewis_tasks.domain.loadgen import LoadResult, run_loadtest
from lewis_tasks.domain.scope import Scope
from lewis_tasks.errors import InvalidInput, OutOfScope, TransientError
from tests.support.httpservers import ServerThread, free_port

LOOPBACK = Scope.from_allow(["127.0.0.0/8"])


@pytest.fixture(scope="module")
def servers(serve: ServerThread) -> ServerThread:
    serve.start("app", "127.0.0.1")
    serve.start("stall", "127.0.0.1")
    return serve


@pytest.fixture(scope="module")
def app(servers: ServerThread) -> str:
    return servers.servers[0].url


def load(url: str, scope: Scope = LOOPBACK, parts: int = 1, **options: Any) -> list[LoadResult]:
    """``parts`` load tests side by side on one session (as N processes would, but in one)."""

    async def main() -> list[LoadResult]:
        session = create_session(
            scope,
            max_connections=100,
            limit_per_host=0,
            connect_timeout=2,
            read_timeout=None,
            keep_alive=True,
        )
        async with session:
            return list(
                await asyncio.gather(*(run_loadtest(session, url, **options) for _ in range(parts)))
            )

    return asyncio.run(main())


def test_closed_loop_counts_every_request(app: str) -> None:
    [result] = load(app + "/bytes/100", concurrency=10, requests=200)
    assert result.mode == "closed" and result.requests == 200
    assert result.status_counts == {"200": 200} and result.errors == {}
    assert result.bytes == 200 * 100 and result.latency.count == 200
    assert result.rps > 0 and result.latency.min > 0


def test_duration_bounds_a_closed_loop(app: str) -> None:
    [result] = load(app + "/", concurrency=4, duration=0.5)
    assert result.requests > 0 and result.duration_s >= 0.5
    assert sum(result.status_counts.values()) == result.requests == result.latency.count


def test_open_loop_charges_queueing_to_latency(app: str) -> None:
    # Given a server that takes ≥ 50 ms per answer and one connection (capacity ≤ 20/s)
    # When requests are scheduled at 40/s
    [result] = load(app + "/delay/50", concurrency=1, rate=40, requests=20)
    # Then request k, due at 25k ms, cannot end before 50(k+1) ms: latency ≥ 50 + 25k ms,
    # far above the 50 ms service time a closed loop would report
    assert result.mode == "open" and result.requests == 20
    assert result.latency.max >= 525_000
    assert result.latency.percentile(50) >= 275_000 * (1 - MAX_RELATIVE_ERROR)
    # And the service time (from each actual send, as wrk measures) leaves that wait out
    assert result.service is not None and result.service.count == 20
    assert result.service.min >= 50_000
    assert result.service.percentile(50) < result.latency.percentile(50) / 2
    [closed] = load(app + "/delay/50", concurrency=1, requests=5)
    assert closed.latency.min >= 50_000  # the service time itself is honest in both
    assert closed.service is None and closed.service_latency is closed.latency
    assert closed.to_dict()["service_ms"] == closed.to_dict()["latency_ms"]


def test_open_loop_parts_merge_their_service_times_too(app: str) -> None:
    parts = load(app + "/bytes/10", parts=2, concurrency=2, rate=200, requests=20)
    merged = LoadResult.merge(parts)
    assert merged.service == LatencyHistogram.merged(p.service for p in parts if p.service)
    assert merged.service is not None and merged.service.count == 40
    again = LoadResult.merge(
        LoadResult.from_dict(json.loads(json.dumps(p.to_dict()))) for p in parts
    )
    assert again == merged


def test_open_loop_keeps_to_its_schedule(app: str) -> None:
    [result] = load(app + "/", concurrency=10, rate=100, requests=30)
    # the 30th request is not due before 290 ms, however fast the server
    assert result.requests == 30 and result.duration_s >= 0.29


def test_open_loop_stops_at_the_duration(app: str) -> None:
    [result] = load(app + "/", concurrency=5, rate=50, duration=0.3)
    assert 1 <= result.requests <= 15  # due times 0, 20 … 280 ms


def test_connections_open_before_the_clock_with_one_uncounted_request_each(
    servers: ServerThread, app: str
) -> None:
    server = servers.servers[0]
    got, echoed = server.hits["/bytes/37"], server.hits["/echo"]
    # When a GET run starts, its 4 connections are opened first, one request each
    [result] = load(app + "/bytes/37", concurrency=4, requests=20)
    # Then those 4 are the warm-up, outside the counts; the server saw them all
    assert result.requests == 20 and result.warmup == 4 and result.latency.count == 20
    assert server.hits["/bytes/37"] - got == 24
    # And a POST run (not safe to repeat) sends exactly the requests it counts
    [posted] = load(app + "/echo", concurrency=4, requests=20, method="POST")
    assert posted.requests == 20 and posted.warmup == 0
    assert server.hits["/echo"] - echoed == 20


@pytest.mark.parametrize("rate", [None, 200])
def test_a_cancelled_run_sends_nothing_more(
    servers: ServerThread, app: str, rate: float | None
) -> None:
    server = servers.servers[0]
    path = f"/bytes/{41 if rate is None else 43}"

    async def main() -> tuple[int, int]:
        session = create_session(
            LOOPBACK,
            max_connections=10,
            limit_per_host=0,
            connect_timeout=2,
            read_timeout=None,
            keep_alive=True,
        )
        async with session:
            run = asyncio.ensure_future(
                run_loadtest(session, app + path, concurrency=4, duration=30, rate=rate)
            )
            await asyncio.sleep(1.5)  # past the warm-up, well into the run
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            at_cancel = server.hits[path]
            await asyncio.sleep(0.5)
            return at_cancel, server.hits[path]

    # When a run is cancelled (its task's time limit, Ctrl-C)
    at_cancel, later = asyncio.run(main())
    # Then it had been sending, and no worker of it sends again: the server sees at most the
    # 4 requests that were already on the wire (a run left going sends hundreds meanwhile)
    assert at_cancel > 4 and later - at_cancel <= 4


def test_refused_connections_are_counted_as_errors() -> None:
    [result] = load(f"http://127.0.0.1:{free_port()}/", concurrency=2, requests=10)
    assert result.requests == 0 and result.errors == {"connection_refused": 10}
    assert result.latency.count == 0


def test_stalled_requests_are_cut_at_the_deadline(servers: ServerThread) -> None:
    stall = servers.servers[1].url
    [result] = load(stall + "/", concurrency=3, duration=0.3, drain_grace=0.2)
    assert result.requests == 0 and result.errors == {"unfinished": 3}
    # the run lasted its duration: the grace for answers in flight is not part of it
    assert 0.29 <= result.duration_s <= 0.3 + 1e-6


def test_the_rate_divides_by_the_runs_duration_not_the_grace(app: str) -> None:
    # Given a server answering in 200 ms, loaded for 0.5 s with a 1 s grace for the last answers
    [result] = load(app + "/delay/200", concurrency=4, duration=0.5, drain_grace=1.0)
    # Then the rate is what was answered over 0.5 s (7.00 s was printed for -d 5s, ~29 % low)
    assert result.requests > 0 and result.duration_s <= 0.5 + 1e-6
    assert result.rps == pytest.approx(result.requests / result.duration_s)


def test_out_of_scope_target_is_refused(servers: ServerThread, app: str) -> None:
    server = servers.servers[0]
    before = sum(server.hits.values())
    for host in ("127.0.0.1", "localhost", "2130706433", "[::ffff:127.0.0.1]"):
        with pytest.raises(OutOfScope):
            load(
                f"http://{host}:{server.port}/",
                Scope.from_allow(["127.0.0.2/32"]),
                concurrency=4,
                requests=100,
            )
    assert sum(server.hits.values()) == before


@pytest.mark.parametrize(
    "options, cap",
    [
        ({"concurrency": 2000, "requests": 1}, "max_concurrency"),
        ({"concurrency": 0, "requests": 1}, "max_concurrency"),
        ({"concurrency": 1, "duration": 61.0}, "max_duration"),
        ({"concurrency": 1, "requests": 10, "max_requests": 5}, "max_requests"),
        ({"concurrency": 1, "requests": 1, "rate": 10**6}, "max_rate"),
        ({"concurrency": 1}, "duration or a number of requests"),
        ({"concurrency": 1, "requests": 1, "method": "TRACE"}, "TRACE"),
    ],
)
def test_caps_and_bad_parameters_are_invalid_input(
    app: str, options: dict[str, Any], cap: str
) -> None:
    with pytest.raises(InvalidInput, match=cap):
        load(app + "/", **options)


def test_bad_url_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="ftp://"):
        load("ftp://127.0.0.1/", concurrency=1, requests=1)


def test_parts_start_together_and_merge_exactly(app: str) -> None:
    start_at = time.time() + 0.3
    parts = load(app + "/bytes/10", parts=3, concurrency=4, requests=50, start_at=start_at)
    assert all(part.started_at >= start_at for part in parts)
    merged = LoadResult.merge(parts)
    assert merged.requests == 150 and merged.parts == 3 and merged.concurrency == 12
    assert merged.warmup == 12  # each part opened its 4 connections before the start
    assert merged.bytes == 1500 and merged.status_counts == {"200": 150}
    assert merged.latency == LatencyHistogram.merged(p.latency for p in parts)
    assert merged.duration_s == max(p.duration_s for p in parts)
    # through JSON, as part tasks return them
    again = LoadResult.merge(
        LoadResult.from_dict(json.loads(json.dumps(p.to_dict()))) for p in parts
    )
    assert again == merged
    summary = merged.to_dict()["latency_ms"]
    assert set(summary) >= {"p50_ms", "p90_ms", "p95_ms", "p99_ms", "p99.9_ms", "max_ms"}


def test_progress_is_reported(app: str) -> None:
    seen: list[dict[str, Any]] = []
    load(app + "/", concurrency=2, duration=0.35, on_progress=seen.append, progress_interval=0.1)
    assert seen and {"elapsed_s", "requests", "errors", "rps"} <= set(seen[-1])
    assert seen[-1]["requests"] >= seen[0]["requests"]


def test_a_failing_progress_callback_is_logged_once_and_the_run_goes_on(
    app: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[dict[str, Any]] = []

    def broken(progress: dict[str, Any]) -> None:
        calls.append(progress)
        raise TransientError("progress store unavailable")

    # When every progress line fails to be stored
    with caplog.at_level(logging.WARNING, logger="lewis_tasks.domain.loadgen"):
        [result] = load(
            app + "/", concurrency=1, duration=0.5, on_progress=broken, progress_interval=0.02
        )
    # Then the run still gives its result, progress kept being offered, and one warning says so
    assert result.requests > 0 and result.errors == {}
    assert len(calls) >= 2
    warnings = [r for r in caplog.records if r.name == "lewis_tasks.domain.loadgen"]
    assert len(warnings) == 1 and "progress store unavailable" in warnings[0].getMessage()


# --- bodies: read to the end, counted, never held whole ------------------------------------

BLOCK = bytes(range(256)) * 256  # 64 KiB, sent again and again: the server holds no body


async def _streaming_server() -> tuple[asyncio.Server, int]:
    """GET /length/{n} answers n bytes with a Content-Length, /chunked/{n} in chunked
    encoding; keep-alive; memory on this side is one shared block whatever n is."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                kind, n = head.split(b" ", 2)[1].decode().strip("/").split("/")
                left, chunked = int(n), kind == "chunked"
                length = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % left
                writer.write(b"HTTP/1.1 200 OK\r\n" + length + b"\r\n\r\n")
                while left:
                    block = BLOCK[: min(left, len(BLOCK))]
                    writer.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                    await writer.drain()
                    left -= len(block)
                if chunked:
                    writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture(scope="module")
def streaming(servers: ServerThread) -> Iterator[str]:
    server, port = servers.call(_streaming_server())
    yield f"http://127.0.0.1:{port}"
    server.close()


@pytest.mark.parametrize("kind", ["length", "chunked"])
def test_big_bodies_are_counted_exactly_without_being_held(streaming: str, kind: str) -> None:
    size = 16 << 20
    # Given responses of 16 MiB each, two in flight at a time
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        [result] = load(f"{streaming}/{kind}/{size}", concurrency=2, requests=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then every byte is counted, and the client never held a body (or even a quarter of one)
    assert result.requests == 4 and result.status_counts == {"200": 4}
    assert result.bytes == 4 * size
    assert peak < size // 4, f"peak {peak / 2**20:.1f} MiB while loading 16 MiB bodies"


def test_bodyless_answers_count_zero_bytes(app: str) -> None:
    [result] = load(app + "/bytes/1000", method="HEAD", concurrency=2, requests=10)
    assert result.requests == 10 and result.bytes == 0
    [result] = load(app + "/status/204", concurrency=2, requests=10)
    assert result.status_counts == {"204": 10} and result.bytes == 0


def test_merge_of_nothing_and_malformed_dicts() -> None:
    with pytest.raises(InvalidInput):
        LoadResult.merge([])
    with pytest.raises(InvalidInput, match="malformed"):
        LoadResult.from_dict({"url": "x"})
