"""HTTP batches and load tests end to end: producer → embedded worker → loopback servers → DB.

The scope tests narrow the allowlist to 127.0.0.2/32, so a server on 127.0.0.1 sits outside
it: every spelling of it, and every redirect to it, must be refused per URL while the rest of
the batch goes on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from lewis_tasks.domain.histogram import LatencyHistogram
from lewis_tasks.errors import InvalidInput, OutOfScope
from lewis_tasks.infra import aio, config
from lewis_tasks.producer.base import submit
from lewis_tasks.producer.http import submit_http_batch, submit_loadtest
from tests.support.httpservers import RunningServer, ServerThread, free_port, sha256_of
from tests.support.wait import wait_for

WAIT = 60


@pytest.fixture(scope="module")
def servers(serve: ServerThread) -> ServerThread:
    serve.start("app", "127.0.0.1")  # outside the narrowed scope
    serve.start("app", "127.0.0.2")  # inside it
    serve.start("stall", "127.0.0.1")
    serve.start("trickle", "127.0.0.1", interval=0.2)
    return serve


def outside(servers: ServerThread) -> RunningServer:
    return servers.servers[0]


def inside(servers: ServerThread) -> RunningServer:
    return servers.servers[1]


def stall(servers: ServerThread) -> RunningServer:
    return servers.servers[2]


def trickle(servers: ServerThread) -> RunningServer:
    return servers.servers[3]


@pytest.fixture
def swap_settings(lewis_settings: Any) -> Iterator[Any]:
    """Change sections of the process settings for one test (the embedded worker reads them
    too); the io loop's session is rebuilt so it takes a new scope."""

    def swap(section: str, **changes: Any) -> Any:
        settings = config.replace_section(config.get_settings(), section, **changes)
        config.set_settings(settings)
        aio.shutdown()
        return settings

    try:
        yield swap
    finally:
        config.set_settings(lewis_settings)
        aio.shutdown()


def test_a_batch_gives_each_url_its_outcome_persisted_once(
    celery_worker: Any, servers: ServerThread
) -> None:
    base = inside(servers).url
    urls: list[Any] = [
        f"{base}/bytes/512",
        f"{base}/status/404",
        f"{base}/redirect/2",
        f"http://127.0.0.2:{free_port('127.0.0.2')}/",
        "ftp://127.0.0.2/file",
        "not a url",
        {"url": f"{base}/echo", "method": "POST", "body": "hi"},
    ]
    # When the batch runs
    handle = submit_http_batch(urls)
    summary = handle.wait(timeout=WAIT)
    # Then every URL has its outcome, in order, and the batch counts them once
    assert (summary["total"], summary["done"], summary["ok"], summary["failed"]) == (7, 7, 4, 3)
    assert summary["statuses"] == {"200": 3, "404": 1}
    assert summary["errors"] == {"connection_refused": 1, "invalid_url": 2}
    rows = handle.result()
    assert [r["index"] for r in rows] == list(range(7))
    assert (rows[0]["status"], rows[0]["bytes"], rows[0]["sha256"]) == (200, 512, sha256_of(512))
    assert rows[1]["status"] == 404 and rows[1]["error_class"] is None
    assert len(rows[2]["redirects"]) == 2 and rows[2]["final_url"].endswith("/redirect/0")
    assert [r["error_class"] for r in rows[3:6]] == [
        "connection_refused",
        "invalid_url",
        "invalid_url",
    ]
    assert "ftp" in rows[4]["error"]
    assert rows[6]["status"] == 200 and rows[6]["method"] == "POST"
    assert handle.progress() == {"total": 7, "done": 7, "ok": 4, "failed": 3, "status": "done"}

    # When a chunk is delivered again, and the merge runs again
    again = submit("lewis.http.fetch_chunk", args=[handle.id, 0, urls, {"total": 7}]).wait(
        timeout=WAIT
    )
    merged = submit("lewis.http.merge", args=[[again]], kwargs={"batch_id": handle.id}).wait(
        timeout=WAIT
    )
    # Then no row is stored twice and the counters stand
    assert again["new"] == 0 and again["count"] == 7
    assert handle.progress()["done"] == 7 and len(handle.result()) == 7
    assert {k: merged[k] for k in ("total", "done", "ok", "failed", "statuses", "errors")} == {
        k: summary[k] for k in ("total", "done", "ok", "failed", "statuses", "errors")
    }


def test_stalling_servers_time_out_within_their_budget_while_progress_moves(
    celery_worker: Any, servers: ServerThread
) -> None:
    fast = [f"{inside(servers).url}/bytes/{n}" for n in range(10)]
    stuck = [f"{stall(servers).url}/never", f"{trickle(servers).url}/drip"]
    # Given a batch where one URL hits a server that accepts and never answers, and one a
    # server that trickles its body a byte at a time
    handle = submit_http_batch(fast + stuck, timeout=3)
    # Then the answered URLs show in the progress before the stalled ones give up
    seen = []
    while not handle.ready():
        seen.append(handle.progress())
        time.sleep(0.05)
    assert any(10 <= p["done"] < 12 for p in seen), seen[-3:]
    summary = handle.wait(timeout=WAIT)
    assert summary["errors"] == {"timeout": 2} and summary["ok"] == 10
    rows = handle.result(failed_only=True)
    assert [r["index"] for r in rows] == [10, 11]
    assert all(r["timings"]["total_ms"] >= 3000 for r in rows)  # the budget, not sooner
    assert all("3 s" in r["error"] for r in rows)
    # And the worker stays healthy: the next batch is served
    assert submit_http_batch(fast[:2]).wait(timeout=WAIT)["ok"] == 2


def test_a_read_timeout_shorter_than_the_budget_still_ends_a_silent_read(
    celery_worker: Any, servers: ServerThread, swap_settings: Any
) -> None:
    # Given network.read_timeout well under the URL's budget (the io session drops its read
    # timer only when the budget would always end a stall first)
    swap_settings("network", read_timeout=0.3)
    # When a URL hits a server that never answers
    handle = submit_http_batch([f"{stall(servers).url}/never"], timeout=20)
    summary = handle.wait(timeout=WAIT)
    # Then the read timeout ended it, not the 20 s budget
    assert summary["errors"] == {"timeout": 1}
    (row,) = handle.result()
    assert row["error"].startswith("timed out"), row["error"]
    assert "20 s" not in row["error"]


SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0x7f000001",
    "0x7f.1",
    "[::ffff:127.0.0.1]",
    "localhost",
    "LOCALHOST.",
]


def test_out_of_scope_urls_are_refused_one_by_one_and_the_batch_goes_on(
    celery_worker: Any, servers: ServerThread, swap_settings: Any
) -> None:
    # Given a scope that only allows 127.0.0.2, and a server on 127.0.0.1
    swap_settings("scope", allow=("127.0.0.2/32",))
    target = outside(servers)
    before = sum(target.hits.values())
    spelled = [f"http://{host}:{target.port}/" for host in SPELLINGS]
    via_redirect = [
        f"{inside(servers).url}/to?url=http://127.0.0.1:{target.port}/",
        f"{inside(servers).url}/to?url=http://2130706433:{target.port}/&code=307",
    ]
    # When a batch mixes them with an allowed URL
    handle = submit_http_batch([f"{inside(servers).url}/", *spelled, *via_redirect])
    summary = handle.wait(timeout=WAIT)
    # Then the allowed URL is fetched, every other is refused, and 127.0.0.1 sees nothing
    rows = handle.result()
    assert rows[0]["status"] == 200
    refused = rows[1:]
    assert [r["error_class"] for r in refused] == ["out_of_scope"] * len(refused), [
        (r["url"], r["error"]) for r in refused
    ]
    assert all(len(r["redirects"]) == 1 for r in refused[-2:])
    assert summary["ok"] == 1 and summary["failed"] == len(refused)
    assert sum(target.hits.values()) == before


def test_an_over_cap_batch_is_refused_before_anything_is_enqueued(
    lewis_settings: Any, worker_redis: Any, swap_settings: Any
) -> None:
    swap_settings("http", max_urls=5)
    queued = worker_redis.llen("io")
    with pytest.raises(InvalidInput, match=r"http\.max_urls=5"):
        submit_http_batch([f"http://127.0.0.1:1/{i}" for i in range(6)])
    with pytest.raises(InvalidInput, match="at least one URL"):
        submit_http_batch([])
    with pytest.raises(InvalidInput, match=r"http\.timeout"):
        submit_http_batch(["http://127.0.0.1:1/"], timeout=10_000)
    assert worker_redis.llen("io") == queued


@pytest.mark.parametrize(
    ("options", "cap"),
    [
        ({"concurrency": 10**6, "duration": 1}, "loadtest.max_concurrency"),
        ({"concurrency": 1, "duration": 10**6}, "loadtest.max_duration"),
        ({"concurrency": 1, "duration": 1, "rate": 10**9}, "loadtest.max_rate"),
        ({"concurrency": 1, "requests": 10**9}, "loadtest.max_requests"),
        ({"concurrency": 100, "duration": 1, "workers": 99}, "loadtest.max_workers"),
        ({"concurrency": 1, "duration": 50}, "broker.visibility_timeout"),  # 60 s in tests
        ({"concurrency": 1}, "a duration or a number of requests"),
        ({"concurrency": 1, "duration": 1, "workers": 2}, "cannot be split over 2 workers"),
    ],
)
def test_an_over_cap_load_test_is_refused_naming_the_cap(
    lewis_settings: Any, worker_redis: Any, options: dict[str, Any], cap: str
) -> None:
    queued = worker_redis.llen("io")
    with pytest.raises(InvalidInput, match=cap.replace(".", r"\.")):
        submit_loadtest("http://127.0.0.1:1/", **options)
    assert worker_redis.llen("io") == queued


def test_a_load_test_target_outside_the_scope_is_refused_before_enqueue(
    lewis_settings: Any, swap_settings: Any
) -> None:
    swap_settings("scope", allow=("127.0.0.2/32",))
    for url in ("http://127.0.0.1:8080/", "http://0x7f000001:8080/", "http://localhost:8080/"):
        with pytest.raises(OutOfScope):
            submit_loadtest(url, concurrency=1, duration=1)
    with pytest.raises(InvalidInput, match="only http"):
        submit_loadtest("gopher://127.0.0.2/", concurrency=1, duration=1)


def test_a_two_part_load_test_merges_its_histograms_exactly(
    celery_worker: Any, servers: ServerThread
) -> None:
    # Given a server that answers after 20 ms, loaded by 2 parts of 2 connections each
    handle = submit_loadtest(
        f"{inside(servers).url}/delay/20", concurrency=4, requests=60, workers=2
    )
    result = handle.wait(timeout=WAIT)
    parts = [submit_result(part_id) for part_id in handle.part_ids]
    # Then the merge holds every request of every part, bucket for bucket
    assert [p["requests"] for p in parts] == [30, 30]
    assert result["requests"] == 60 == result["latency_ms"]["count"]
    assert result["status_counts"] == {"200": 60} and result["errors"] == {}
    merged = LatencyHistogram.merged(LatencyHistogram.from_dict(p["histogram"]) for p in parts)
    assert LatencyHistogram.from_dict(result["histogram"]) == merged
    assert result["parts"] == 2 and result["concurrency"] == 4
    # And with one io process here, the second part was handed back 2 × 2 times looking for
    # another process, then ran beside the first and says so
    assert result["processes"] == [parts[0]["process"]] and result["shared_process"]
    assert result["handed_back"] == 4 and sorted(p["shared"] for p in parts) == [False, True]
    # And the latencies are sane: none below the server's own delay, ordered percentiles
    lat = result["latency_ms"]
    assert 20 <= lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    # And the run is stored once: merging again returns what was stored
    stored = handle.result()
    assert stored is not None and stored["status"] == "done"
    assert stored["result"]["requests"] == 60
    again = submit(
        "lewis.http.loadtest_merge", args=[parts], kwargs={"run_id": handle.id, "request": {}}
    ).wait(timeout=WAIT)
    assert again == stored["result"]


def test_a_load_test_that_waited_past_its_start_window_never_hits_the_target(
    celery_app: Any, servers: ServerThread
) -> None:
    from celery.contrib.testing.worker import start_worker

    from lewis_tasks.errors import TransientError

    # Given a load test submitted while no io worker is there to start it
    path = "/expiry-probe"
    handle = submit_loadtest(
        f"{inside(servers).url}{path}", concurrency=2, requests=10, workers=2, start_within=0.3
    )
    time.sleep(0.8)
    # When a worker turns up after the parts' start window closed
    with start_worker(
        celery_app,
        pool="threads",
        concurrency=2,
        queues=("io", "cpu"),
        perform_ping_check=False,
        shutdown_timeout=10.0,
    ):
        # Then the wait says the parts expired unrun, and the target saw not one request
        with pytest.raises(TransientError, match="expired waiting in the queue"):
            handle.wait(timeout=WAIT)
        assert inside(servers).hits[path] == 0
        # And the run is recorded as failed (the chord's errback ran on the worker)
        wait_for(
            lambda: (stored := handle.result()) is not None and stored["status"] == "failed",
            WAIT,
            interval=0.1,
            what="the run recorded as failed",
        )
    with pytest.raises(InvalidInput, match="start_within"):
        submit_loadtest(f"{inside(servers).url}/", concurrency=1, requests=1, start_within=0)


def submit_result(task_id: str) -> dict[str, Any]:
    from celery.result import AsyncResult

    from lewis_tasks.infra.celery_app import app

    return dict(AsyncResult(task_id, app=app).get(timeout=WAIT))


def test_a_failed_chunk_marks_the_batch_failed(celery_worker: Any, lewis_settings: Any) -> None:
    from celery import chord

    from lewis_tasks.infra.celery_app import app
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.storage.db import session_scope
    from lewis_tasks.storage.http import get_http_batch, save_http_batch

    with session_scope(get_engine()) as session:
        save_http_batch(session, "doomed", total=1)
    # Given a chord whose only chunk is malformed (start is not an index)
    callback = app.signature("lewis.http.merge", kwargs={"batch_id": "doomed"})
    callback.link_error(
        app.signature("lewis.http.abort", kwargs={"kind": "batch", "run_id": "doomed"})
    )
    result = chord(
        [app.signature("lewis.http.fetch_chunk", args=("doomed", -1, ["http://127.0.0.1:1/"], {}))]
    )(callback)
    with pytest.raises(Exception, match="start must be an index"):
        result.get(timeout=WAIT)
    # Then the errback records the batch as failed, with the reason

    def failed() -> bool:
        with session_scope(get_engine()) as session:
            batch = get_http_batch(session, "doomed")
            return batch is not None and batch.status == "failed"

    wait_for(failed, WAIT, what="the batch to be marked failed")
    with session_scope(get_engine()) as session:
        batch = get_http_batch(session, "doomed")
        assert batch is not None and batch.summary is not None
        assert "start must be an index" in batch.summary["error"]


def test_chunks_and_parts_fit_their_time_limits(lewis_settings: Any) -> None:
    from lewis_tasks.infra.planning import chunk_seconds, chunk_size, loadtest_budget

    # A chunk whose URLs all stall, max_connections at a time, ends within its time limit
    per_wave = lewis_settings.network.max_connections
    for budget in (0.5, 3.0, 10.0, 25.0):
        size = chunk_size(lewis_settings, budget)
        waves = -(-size // per_wave)
        assert size >= 1 and (waves == 1 or waves * (budget + 0.1) <= chunk_seconds(lewis_settings))
    assert chunk_size(lewis_settings, 0.01) == lewis_settings.http.chunk_size
    # The longest load test part ends before the broker would hand it to another worker
    soft, hard = loadtest_budget(lewis_settings).time_limits(None)
    assert soft < hard < lewis_settings.broker.visibility_timeout


# --- load-test progress: off the loop, never fatal -------------------------------------------


def test_a_part_whose_progress_cannot_be_written_still_runs_and_returns(
    celery_worker: Any, servers: ServerThread, worker_redis: Any
) -> None:
    from lewis_tasks.infra.progress import LOADTEST_PROGRESS_KEY as PROGRESS_KEY

    # Given a run whose progress hash cannot take an HSET (the key holds a string: WRONGTYPE)
    run_id = f"progress-broken-{time.monotonic_ns()}"
    key = PROGRESS_KEY.format(run=run_id)
    worker_redis.set(key, "not a hash", ex=120)
    spec = {"url": f"{inside(servers).url}/", "concurrency": 2, "duration": 1.5}
    # When a part runs long enough for the once-a-second progress line, and its final line
    result = submit("lewis.http.loadtest_part", args=[run_id, 0, 1, spec]).wait(timeout=WAIT)
    # Then the part still loads the URL and returns its result; progress is simply missing
    assert result["requests"] > 0 and result["errors"] == {}
    assert worker_redis.type(key) == b"string"
    worker_redis.delete(key)


def test_a_part_leaves_its_final_progress_line(
    celery_worker: Any, servers: ServerThread, worker_redis: Any
) -> None:
    import json

    from lewis_tasks.infra.progress import LOADTEST_PROGRESS_KEY as PROGRESS_KEY

    run_id = f"progress-ok-{time.monotonic_ns()}"
    spec = {"url": f"{inside(servers).url}/", "concurrency": 1, "requests": 5}
    result = submit("lewis.http.loadtest_part", args=[run_id, 0, 1, spec]).wait(timeout=WAIT)
    key = PROGRESS_KEY.format(run=run_id)
    line = json.loads(worker_redis.hget(key, "0"))
    assert line["done"] is True and line["requests"] == result["requests"] == 5
    assert worker_redis.ttl(key) > 0
    worker_redis.delete(key)


@pytest.fixture
def one_thread() -> Iterator[Any]:
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(1, thread_name_prefix="test-progress")
    yield executor
    executor.shutdown(wait=True)


def test_progress_lines_are_written_latest_first_with_a_ttl(
    redis_client: Any, one_thread: Any
) -> None:
    import json
    import threading

    from lewis_tasks.infra.progress import ProgressWriter

    writer = ProgressWriter(redis_client, "progress:test", "3", 60, one_thread)
    # Given the writer's thread busy, lines published meanwhile are coalesced: the newest wins
    gate = threading.Event()
    one_thread.submit(gate.wait, 30)
    before = _hset_calls(redis_client)
    for n in range(5):
        writer.publish({"requests": n})
    gate.set()
    writer.flush(30)
    assert json.loads(redis_client.hget("progress:test", "3")) == {"requests": 4}
    assert _hset_calls(redis_client) - before == 1
    assert 0 < redis_client.ttl("progress:test") <= 60
    # And a later line replaces it
    writer.publish({"requests": 9, "done": True})
    writer.flush(30)
    assert json.loads(redis_client.hget("progress:test", "3"))["done"] is True


def _hset_calls(client: Any) -> int:
    return int(client.info("commandstats").get("cmdstat_hset", {}).get("calls", 0))


def test_publishing_progress_never_waits_for_redis_nor_raises(
    servers: ServerThread, one_thread: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import logging
    import threading

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from lewis_tasks.infra.progress import ProgressWriter

    # Given a "Redis" that accepts connections and never answers, and one that refuses them
    silent = redis.Redis(
        host="127.0.0.1",
        port=stall(servers).port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    refused = redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    writers = [
        ProgressWriter(client, "progress:x", "0", 60, one_thread) for client in (silent, refused)
    ]
    ours = "lewis_tasks.infra.progress"  # where ProgressWriter logs

    async def on_the_loop() -> None:
        for n in range(3):
            for writer in writers:
                writer.publish({"requests": n})  # as the load generator's ticker does
            await asyncio.sleep(0)

    gate = threading.Event()
    one_thread.submit(gate.wait, 30)  # the writes' thread is held: publish must not need it
    connections = stall(servers).hits["connections"]
    with caplog.at_level(logging.DEBUG, logger=ours):
        # When progress is published from a coroutine
        asyncio.run(on_the_loop())
        # Then publish returned without touching either server, and raised nothing
        assert stall(servers).hits["connections"] == connections
        assert [r for r in caplog.records if r.name == ours] == []
        gate.set()
        for writer in writers:
            writer.flush(30)
        # And once written (and failed) elsewhere, each writer warned once
        for writer in writers:  # more failures: debug lines only
            writer.publish({"requests": 9})
            writer.flush(30)
    records = [r for r in caplog.records if r.name == ours]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("not published" in r.getMessage() for r in warnings)
    assert len(records) == 4
    silent.close()
    refused.close()


def test_a_broker_that_is_down_is_one_broker_unavailable(lewis_settings: Any) -> None:
    from celery import Celery

    from lewis_tasks.errors import BrokerUnavailable
    from lewis_tasks.infra.celery_app import configure_app

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = configure_app(
        Celery("lewis-dead-broker", set_as_current=False),
        config.replace_section(lewis_settings, "broker", url=dead),
    )
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        submit_http_batch(["http://127.0.0.1:1/"], app=app)
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        submit_loadtest("http://127.0.0.1:1/", concurrency=1, requests=1, app=app)
