"""Fewer Redis round trips per task message (issue 18.2), on a real redis-server.

The batch take (``broker.take_batch``): one take brings as many queued messages as the
consumer's prefetch still allows, at most ``take_batch``, each recorded in ``unacked`` as the
one-message take records it, in the order BRPOP would give them.

The settled ack (``broker.settle_with_result``): a task's SUCCESS stored on the broker's own
Redis server takes its message out of ``unacked`` in the store's script, and the late ack that
follows makes no round trip. Anything else (a failure, another task's id, another server, a
channel without the option) keeps Celery's ack.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis
from celery import Celery, states

from lewis_tasks.infra import transport as ours
from lewis_tasks.infra.redis_server import EmbeddedRedis
from lewis_tasks.infra.result_backend import LewisRedisBackend, backend_url
from tests.support.procs import lewis_process, logs_on_failure, wait_for

OURS = "lewis_tasks.infra.transport:Transport"


def _db(server: EmbeddedRedis, db: int) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{db}"


def _publish(url: str, queue: str, bodies: list[Any], **options: Any) -> None:
    with kombu.Connection(url) as producer:
        publisher = producer.Producer()
        for body in bodies:
            publisher.publish(
                body, routing_key=queue, declare=[kombu.Queue(queue, routing_key=queue)], **options
            )


def _consumer(
    url: str, queues: list[str], received: list[Any], prefetch: int = 0, **options: Any
) -> kombu.Connection:
    """Our transport's consumer; it keeps the messages in ``received`` and acks none."""
    conn = kombu.Connection(url, transport=OURS, transport_options=options)
    channel = conn.default_channel
    if prefetch:
        channel.basic_qos(0, prefetch, False)
    kombu.Consumer(
        channel,
        [kombu.Queue(q, routing_key=q) for q in queues],
        callbacks=[lambda body, message: received.append(message)],
    ).consume()
    return conn


def _calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


# -- the batch take ---------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "prefetch", "expected"), [(8, 0, 8), (8, 3, 3), (1, 0, 1)])
def test_one_take_brings_what_prefetch_allows_at_most_take_batch(
    server: EmbeddedRedis, batch: int, prefetch: int, expected: int
) -> None:
    total = 40  # deep enough for a take of 8 (a take brings at most a quarter of the queue)
    _publish(server.url, "a", [{"n": n} for n in range(total)])
    client = redis.Redis.from_url(server.url)
    received: list[Any] = []
    conn = _consumer(server.url, ["a"], received, prefetch=prefetch, take_batch=batch)
    takes = _calls(client, "evalsha") + _calls(client, "eval")
    conn.drain_events(timeout=5)  # one poll: one take
    # Then one take brought that many, in publish order, each recorded in unacked
    assert _calls(client, "evalsha") + _calls(client, "eval") == takes + 1
    assert [m.decode()["n"] for m in received] == list(range(expected))
    tags = {m.delivery_tag.encode() for m in received}
    assert set(client.hkeys("unacked")) == tags == set(client.zrange("unacked_index", 0, -1))
    assert client.llen("a") == total - expected
    # and acking them empties unacked; the rest follow in order, prefetch respected
    while len(received) < total:
        for message in received:
            if not message.acknowledged:
                message.ack()
        conn.drain_events(timeout=5)
        assert client.hlen("unacked") <= (prefetch or batch)
    for message in received:
        if not message.acknowledged:
            message.ack()
    assert [m.decode()["n"] for m in received] == list(range(total))
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    conn.close()
    client.close()


@pytest.mark.parametrize(("queued", "expected"), [(8, 2), (3, 1), (100, 16)])
def test_a_take_leaves_most_of_a_short_queue_to_the_other_workers(
    server: EmbeddedRedis, queued: int, expected: int
) -> None:
    """A scan's few chunks, pushed at once, wake every idle io worker: the first take must not
    carry them all off to one process (a quarter of what waits at most; a drain's deep queue
    still goes ``take_batch`` at a time)."""
    _publish(server.url, "a", [{"n": n} for n in range(queued)])
    received: list[Any] = []
    conn = _consumer(server.url, ["a"], received, take_batch=16)
    conn.drain_events(timeout=5)
    assert len(received) == expected
    conn.close()


def test_a_batch_keeps_priorities_and_reports_the_rest(server: EmbeddedRedis) -> None:
    _publish(server.url, "a", [{"n": "a9"}], priority=9)  # first, but of a lower priority
    _publish(server.url, "a", [{"n": f"a0-{i}"} for i in range(8)], priority=0)
    received: list[Any] = []
    conn = _consumer(server.url, ["a"], received, take_batch=16)
    conn.drain_events(timeout=5)
    # a quarter of the 9 waiting, priority 0 first; the next take runs at once (the script
    # said a list still holds one: no idle wait first)
    assert [m.decode()["n"] for m in received] == ["a0-0", "a0-1"]
    assert conn.default_channel._take_idle is False
    while len(received) < 9:
        conn.drain_events(timeout=5)
    assert received[-1].decode() == {"n": "a9"} and conn.default_channel._take_idle is True
    conn.close()


def test_a_delivery_that_raises_does_not_strand_the_rest_of_its_batch(
    server: EmbeddedRedis,
) -> None:
    _publish(server.url, "a", [{"n": n} for n in range(12)])
    seen: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        seen.append(body["n"])
        if body["n"] == 0:
            raise RuntimeError("callback failed")

    conn = kombu.Connection(server.url, transport=OURS, transport_options={"take_batch": 3})
    kombu.Consumer(
        conn.default_channel, [kombu.Queue("a", routing_key="a")], callbacks=[on_message]
    ).consume()
    with pytest.raises(RuntimeError, match="callback failed"):
        conn.drain_events(timeout=5)
    assert seen == [0, 1, 2]  # the error came after every message of the take was delivered
    conn.close()  # and closing restores all three, as it restores any unacked message
    client = redis.Redis.from_url(server.url)
    assert client.llen("a") == 12 and client.hlen("unacked") == 0
    client.close()


# -- the settled ack --------------------------------------------------------------------------


class _Request:
    """What Celery's trace hands the backend: the running task's request context."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.ignore_result = False


def _backend(url: str) -> LewisRedisBackend:
    app = Celery("settle-test", broker=url, backend=backend_url(url))
    app.conf.result_serializer = "json"
    backend = app.backend
    assert isinstance(backend, LewisRedisBackend)
    return backend


def _taken(server: EmbeddedRedis, task_id: str, **options: Any) -> tuple[kombu.Connection, Any]:
    """A task message with id ``task_id``, taken by our consumer and not yet acked."""
    _publish(server.url, "io", [{"task": "t"}], headers={"id": task_id})
    received: list[Any] = []
    conn = _consumer(server.url, ["io"], received, **options)
    conn.drain_events(timeout=5)
    assert len(received) == 1
    return conn, received[0]


@pytest.mark.parametrize("results_db", [0, 1])
def test_a_stored_success_settles_its_messages_ack(server: EmbeddedRedis, results_db: int) -> None:
    client = redis.Redis.from_url(server.url)
    conn, message = _taken(server, "task-1", settle_with_result=True)
    assert client.hlen("unacked") == 1
    backend = _backend(_db(server, results_db))
    pipelines = _calls(client, "exec")

    backend.store_result("task-1", {"ok": 1}, states.SUCCESS, request=_Request("task-1"))
    # Then the store took the message out of unacked, in the results' own round trip
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    message.ack()  # and Celery's ack that follows makes no round trip (kombu's is a MULTI)
    assert _calls(client, "exec") == pipelines
    # The result is where it belongs: the backend's connection is still on its own database
    assert backend.get_task_meta("task-1", cache=False)["result"] == {"ok": 1}
    results = redis.Redis.from_url(_db(server, results_db))
    assert results.exists(backend.get_key_for_task("task-1"))
    assert results_db == 0 or not client.exists(backend.get_key_for_task("task-1"))
    backend.store_result("task-2", 2, states.SUCCESS)  # a later store lands there too
    assert json.loads(results.get(backend.get_key_for_task("task-2")) or "{}")["result"] == 2
    assert ours.settlements.done(message.delivery_tag) is False  # nothing left behind
    conn.close()
    client.close()
    results.close()


@pytest.mark.parametrize(
    ("case", "state", "request_id", "option"),
    [
        ("a failure may still be rejected", states.FAILURE, "task-1", True),
        ("another task's store", states.SUCCESS, "task-9", True),
        ("the option off", states.SUCCESS, "task-1", False),
    ],
)
def test_anything_else_keeps_celerys_ack(
    server: EmbeddedRedis, case: str, state: str, request_id: str, option: bool
) -> None:
    client = redis.Redis.from_url(server.url)
    conn, message = _taken(server, "task-1", settle_with_result=option)
    backend = _backend(server.url)
    result: Any = ValueError("boom") if state == states.FAILURE else 1
    backend.store_result("task-1", result, state, request=_Request(request_id))
    assert client.hlen("unacked") == 1, case  # the store left the message alone
    pipelines = _calls(client, "exec")
    message.ack()
    assert _calls(client, "exec") == pipelines + 1 and client.hlen("unacked") == 0, case
    conn.close()
    client.close()


def test_a_message_on_another_server_is_not_settled_by_this_one(
    server: EmbeddedRedis, tmp_path: Path
) -> None:
    other = EmbeddedRedis(tmp_path / "other").start()
    try:
        client = redis.Redis.from_url(server.url)
        conn, message = _taken(server, "task-1", settle_with_result=True)
        _backend(other.url).store_result("task-1", 1, states.SUCCESS, request=_Request("task-1"))
        assert client.hlen("unacked") == 1
        message.ack()
        assert client.hlen("unacked") == 0
        conn.close()
        client.close()
    finally:
        other.stop()


def test_a_closed_channel_leaves_no_settlement_behind(server: EmbeddedRedis) -> None:
    conn, message = _taken(server, "task-1", settle_with_result=True)
    assert ours.settlements.claim("task-1", conn.default_channel.settle_where[0]) is not None
    conn.close()  # restores the message; its entry goes with the channel
    assert ours.settlements.claim("task-1", ("", "", 0)) is None
    assert ours.settlements._tasks.get("task-1") is None


def test_a_real_io_worker_settles_every_ack_with_its_result(
    server: EmbeddedRedis, tmp_path: Path
) -> None:
    """``lewis worker io`` as shipped: N tasks, every result stored, nothing left unacked, and
    no ack pipeline of its own for any of them (with the option off: one per task)."""
    from lewis_tasks.infra.celery_app import configure_app
    from lewis_tasks.infra.config import load_settings
    from lewis_tasks.producer import submit_many

    count = 120
    client = redis.Redis.from_url(server.url)
    results = redis.Redis.from_url(_db(server, 1))
    env = {
        "LEWIS_BROKER_URL": server.url,
        "LEWIS_BROKER_RESULT_BACKEND": _db(server, 1),
        "LEWIS_STACK_HOME": str(tmp_path / "home"),
        "LEWIS_MONITORING_REPORTING": "false",
    }
    settings = load_settings(env=env)
    app = configure_app(Celery("settle-producer"), settings)
    pipelines: dict[str, int] = {}
    for settle in ("true", "false"):
        log = tmp_path / f"worker-{settle}.log"
        worker_env = {**env, "LEWIS_BROKER_SETTLE_WITH_RESULT": settle}
        with logs_on_failure(tmp_path), lewis_process(["worker", "io"], worker_env, log):
            wait_for(lambda: "ready" in log.read_text(), timeout=60, what="the io worker")  # noqa: B023
            results.flushdb()
            before = _calls(client, "exec")
            submit_many("lewis.bench.io_noop", [((), {})] * count, app=app, queue="io", pack=1)
            wait_for(lambda: results.dbsize() >= count, timeout=60, what="every result")
            wait_for(lambda: client.hlen("unacked") == 0, timeout=10, what="every ack")
            pipelines[settle] = _calls(client, "exec") - before
        stored = [json.loads(v or "{}") for v in results.mget(results.keys("*"))]
        assert len(stored) == count and {m["status"] for m in stored} == {"SUCCESS"}
    # other clients' transactions (reporting is off) stay well under one per task
    assert pipelines["false"] >= count > 4 * pipelines["true"], pipelines
    client.close()
    results.close()


def test_a_results_user_that_may_not_ack_stores_alone_and_says_so_once(
    server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # Given results stored by a Redis user limited to the result keys (an ACL)
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser(
        "results",
        enabled=True,
        passwords=["+pw"],
        keys=["celery-task-meta-*"],
        channels=["*"],
        commands=["+@all"],
    )
    backend = _backend(server.url.replace("redis://", "redis://results:pw@"))
    received: list[Any] = []
    _publish(server.url, "io", [{"task": "t"}], headers={"id": "task-1"})
    _publish(server.url, "io", [{"task": "t"}], headers={"id": "task-2"})
    conn = _consumer(server.url, ["io"], received, settle_with_result=True)
    while len(received) < 2:
        conn.drain_events(timeout=5)
    with caplog.at_level(logging.WARNING, logger="lewis_tasks.infra.result_backend"):
        for task_id in ("task-1", "task-2"):
            backend.store_result(task_id, task_id, states.SUCCESS, request=_Request(task_id))
    # Then every result is stored, the messages wait for Celery's acks, and one line says why
    for task_id in ("task-1", "task-2"):
        assert backend.get_task_meta(task_id, cache=False)["result"] == task_id
    assert admin.hlen("unacked") == 2
    assert len(caplog.records) == 1 and "Celery acks each message itself" in caplog.text
    for message in received:
        message.ack()
    assert admin.hlen("unacked") == 0
    conn.close()
    admin.close()


def test_a_forked_child_cannot_settle_its_parents_messages(server: EmbeddedRedis) -> None:
    """A prefork pool process stores its tasks' results; the message is its parent's to ack."""
    import os

    conn, message = _taken(server, "task-1", settle_with_result=True)
    where = conn.default_channel.settle_where[0]
    assert ours.settlements.claim("task-1", where) is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it could claim, and leave at once
        os.write(write, b"none" if ours.settlements.claim("task-1", where) is None else b"some")
        os._exit(0)
    os.close(write)
    assert os.read(read, 8) == b"none"
    os.waitpid(pid, 0)
    os.close(read)
    assert ours.settlements.claim("task-1", where) is not None  # the parent still can
    message.ack()
    conn.close()
