"""Our Redis transport (lewis_tasks/infra/transport.py), on a real redis-server.

Reaching the broker after Celery tore its connection down (issue 12, item 7): the sequence is
Celery's on a lost connection, ``collect()`` then ``close()`` of a connection whose channel
holds an unacked message, a pending BRPOP and an auto-delete fanout queue
(docs/upstream/kombu-restore-hostname.md). kombu's own channel raises AttributeError there.

The atomic take (docs/atomic-unacked.md): a consumer process killed with SIGKILL the moment it
holds a message, before its callback ran, loses it on kombu's transport and leaves it in
``unacked`` on ours; priorities, several queues, idle waiting, no-ack consumers, restores and
a real worker's remote control still behave as kombu's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
from typing import Any

import kombu
import pytest
import redis

from lewis_tasks.infra import transport as ours
from lewis_tasks.infra.redis_server import EmbeddedRedis
from tests.support.procs import wait_for

OURS = "lewis_tasks.infra.transport:Transport"


def _consume_one_unacked(url: str, transport: str | None) -> tuple[kombu.Connection, list[Any]]:
    queue = kombu.Queue("work", routing_key="work")
    with kombu.Connection(url) as producer:
        producer.Producer().publish({"n": 1}, routing_key="work", declare=[queue])
    conn = kombu.Connection(url, transport=transport)
    received: list[Any] = []
    broadcast = kombu.Queue(
        "work.broadcast", kombu.Exchange("work.broadcast", "fanout"), auto_delete=True
    )
    kombu.Consumer(
        conn.default_channel,
        [queue, broadcast],
        callbacks=[lambda body, message: received.append(message)],
    ).consume()
    conn.drain_events(timeout=5)
    assert len(received) == 1
    waiting = False
    while not waiting:  # until a blocking read (BRPOP, or our BLMOVE) is outstanding, as in
        try:  # a worker waiting for work (a drain may end on the pub/sub socket's event)
            conn.drain_events(timeout=0.1)
        except TimeoutError:
            waiting = bool(getattr(conn.default_channel, "_in_poll", None))
    return conn, received


def _kill(server: EmbeddedRedis) -> None:
    assert server.process is not None
    server.process.kill()
    server.process.wait()


def test_kombus_channel_crashes_closing_after_a_lost_broker(server: EmbeddedRedis) -> None:
    """The upstream bug, kept as a canary: when kombu fixes it, transport.py may go."""
    conn, _ = _consume_one_unacked(server.url, None)
    _kill(server)
    conn.collect()
    with pytest.raises(AttributeError, match="hostname"):
        conn.close()


def test_our_channel_restores_the_unacked_message_once_redis_is_back(server: EmbeddedRedis) -> None:
    conn, _ = _consume_one_unacked(server.url, OURS)
    client = redis.Redis.from_url(server.url)
    assert client.hlen("unacked") == 1 and client.llen("work") == 0
    client.close()
    # Given Redis died under the consumer, and Celery collected the connection
    _kill(server)
    conn.collect()
    # When Redis is back (same port, same AOF) by the time the connection is closed
    server.start()
    conn.close()
    # Then the close put the in-flight message back in its queue, as kombu means it to
    client = redis.Redis.from_url(server.url)
    assert client.llen("work") == 1 and client.hlen("unacked") == 0
    client.close()


def test_our_channel_closes_with_a_connection_error_while_redis_is_down(
    server: EmbeddedRedis,
) -> None:
    conn, _ = _consume_one_unacked(server.url, OURS)
    _kill(server)
    conn.collect()
    conn.close()  # a connection error, swallowed by kombu: no AttributeError
    # the message stays in unacked, where the visibility sweep finds it
    server.start()
    client = redis.Redis.from_url(server.url)
    assert client.hlen("unacked") == 1
    client.close()


# A consumer that dies by SIGKILL the moment the transport hands it a message: after the take,
# before the callback (where kombu's QoS.append would record the message as unacked).
KILLED_ON_DELIVERY = """
import os, signal, sys
import kombu
url, transport = sys.argv[1], sys.argv[2] or None
conn = kombu.Connection(url, transport=transport)
queue = kombu.Queue("work", routing_key="work")
kombu.Consumer(conn.default_channel, [queue], callbacks=[lambda body, message: None]).consume()
conn.transport._deliver = lambda message, queue: os.kill(os.getpid(), signal.SIGKILL)
conn.drain_events(timeout=10)
"""


def _publish(url: str, queue: str, body: dict[str, Any], **options: Any) -> None:
    with kombu.Connection(url) as producer:
        producer.Producer().publish(
            body, routing_key=queue, declare=[kombu.Queue(queue, routing_key=queue)], **options
        )


def _killed_on_delivery(url: str, transport: str | None) -> redis.Redis:
    """Publish one message to ``work``; a consumer takes it and is killed at once."""
    _publish(url, "work", {"n": 1})
    done = subprocess.run(
        [sys.executable, "-c", KILLED_ON_DELIVERY, url, transport or ""],
        timeout=60,
        capture_output=True,
    )
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    return redis.Redis.from_url(url)


def test_kombus_consumer_killed_after_brpop_loses_the_message(server: EmbeddedRedis) -> None:
    """The window, kept as a canary: the message is neither queued nor unacked."""
    client = _killed_on_delivery(server.url, None)
    assert client.llen("work") == 0 and client.hlen("unacked") == 0
    client.close()


def test_our_consumer_killed_after_the_take_leaves_the_message_unacked(
    server: EmbeddedRedis,
) -> None:
    client = _killed_on_delivery(server.url, OURS)
    # Then the message is in unacked and its index, as kombu's QoS.append would write it
    assert client.llen("work") == 0
    [(tag, stored)] = client.hgetall("unacked").items()
    assert client.zscore("unacked_index", tag) is not None
    payload, exchange, routing_key = json.loads(stored)
    assert payload["properties"]["delivery_tag"].encode() == tag
    assert (exchange, routing_key) == ("", "work")
    client.close()
    # and a consumer past the visibility timeout gets it again, marked redelivered
    conn = kombu.Connection(server.url, transport=OURS, transport_options={"visibility_timeout": 0})
    received: list[Any] = []
    kombu.Consumer(
        conn.default_channel,
        [kombu.Queue("work", routing_key="work")],
        callbacks=[lambda body, message: received.append(message)],
    ).consume()
    while not received:  # the first empty poll runs the restore sweep
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=1)
    assert received[0].decode() == {"n": 1} and received[0].delivery_info["redelivered"]
    conn.close()


def _consumer(
    url: str,
    queues: list[str],
    received: list[Any],
    no_ack: bool = False,
    ack: bool = True,
    **options: Any,
) -> kombu.Connection:
    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        if ack and not no_ack:
            message.ack()

    conn = kombu.Connection(url, transport=OURS, transport_options=options)
    kombu.Consumer(
        conn.default_channel,
        [kombu.Queue(q, routing_key=q) for q in queues],
        callbacks=[on_message],
        no_ack=no_ack,
    ).consume()
    return conn


def _drain(conn: kombu.Connection, received: list[Any], count: int) -> None:
    while len(received) < count:
        conn.drain_events(timeout=10)


def _wait_blocked_in(conn: kombu.Connection, client: redis.Redis, command: str) -> None:
    """Until the consumer waits for work blocked in ``command`` (no busy polling)."""

    def blocked() -> bool:
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.2)
        return any(c["cmd"] == command for c in client.client_list())

    wait_for(blocked, timeout=10, what=f"the consumer blocked in {command}")


def test_the_take_honours_priorities_and_serves_every_queue(server: EmbeddedRedis) -> None:
    # Given messages on two queues, one of them also on a lower priority (9) sub-list
    _publish(server.url, "a", {"n": "a9"}, priority=9)
    _publish(server.url, "a", {"n": "a0"}, priority=0)
    _publish(server.url, "b", {"n": "b0"})
    received: list[Any] = []
    conn = _consumer(server.url, ["a", "b"], received)
    _drain(conn, received, 3)
    conn.close()
    # Then priority 0 of every queue came first, and nothing stays unacked after the acks
    assert sorted(m["n"] for m in received[:2]) == ["a0", "b0"] and received[2] == {"n": "a9"}
    client = redis.Redis.from_url(server.url)
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    client.close()


def test_an_idle_consumer_waits_in_redis_and_sees_a_message_on_its_second_queue(
    server: EmbeddedRedis,
) -> None:
    received: list[Any] = []
    conn = _consumer(server.url, ["a", "b"], received)
    client = redis.Redis.from_url(server.url)

    _wait_blocked_in(conn, client, "blmove")  # on the first queue
    assert client.llen("a") == 0  # the wait takes nothing
    _publish(server.url, "b", {"n": "b"})
    _drain(conn, received, 1)
    assert received == [{"n": "b"}]
    conn.close()
    client.close()


def test_a_no_ack_consumer_keeps_kombus_path(server: EmbeddedRedis) -> None:
    _publish(server.url, "a", {"n": 1})
    received: list[Any] = []
    conn = _consumer(server.url, ["a"], received, no_ack=True)
    _drain(conn, received, 1)
    # nothing recorded for a message nobody will ack (the take would leave it to redelivery)
    client = redis.Redis.from_url(server.url)
    assert client.hlen("unacked") == 0
    conn.close()
    assert client.llen("a") == 0 and client.hlen("unacked") == 0
    client.close()


def test_closing_restores_a_taken_unacked_message(server: EmbeddedRedis) -> None:
    _publish(server.url, "a", {"n": 1})
    received: list[Any] = []
    conn = _consumer(server.url, ["a"], received, ack=False)
    _drain(conn, received, 1)
    client = redis.Redis.from_url(server.url)
    assert client.hlen("unacked") == 1 and client.llen("a") == 0
    conn.close()  # kombu's restore_unacked, unchanged
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    assert json.loads(client.lindex("a", 0) or "null")["properties"]["delivery_info"]["redelivered"]
    client.close()


def test_the_take_survives_a_redis_restart_that_forgot_the_script(server: EmbeddedRedis) -> None:
    received: list[Any] = []
    conn = _consumer(server.url, ["a"], received)
    _publish(server.url, "a", {"n": 1})
    _drain(conn, received, 1)
    client = redis.Redis.from_url(server.url)
    client.script_flush()  # as a restart does
    _publish(server.url, "a", {"n": 2})
    _drain(conn, received, 2)
    assert received == [{"n": 1}, {"n": 2}] and client.hlen("unacked") == 0
    conn.close()
    client.close()


def test_a_redis_older_than_6_2_gets_kombus_path_and_one_warning(
    server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # (no old redis-server here: the version the server reports is the one thing replaced)
    info = redis.Redis.info
    monkeypatch.setattr(
        redis.Redis,
        "info",
        lambda self, *a, **k: {**info(self, *a, **k), "redis_version": "6.0.16"},
    )
    _publish(server.url, "a", {"n": 1})
    received: list[Any] = []
    with caplog.at_level(logging.WARNING, logger=ours.__name__):
        conn = _consumer(server.url, ["a"], received)
        conn.channel()  # a second channel of the same transport asks no more
        _drain(conn, received, 1)
    assert received == [{"n": 1}]
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "6.0.16 is older than 6.2" in caplog.text
    client = redis.Redis.from_url(server.url)
    assert client.hlen("unacked") == 0  # acked: recorded and removed the kombu way
    _wait_blocked_in(conn, client, "brpop")
    conn.close()
    client.close()


def test_broker_atomic_take_false_keeps_kombus_path(server: EmbeddedRedis) -> None:
    from lewis_tasks.infra.celery_app import celery_config
    from lewis_tasks.infra.config import load_settings

    settings = load_settings(env={"LEWIS_BROKER_ATOMIC_TAKE": "false"})
    options = celery_config(settings)["broker_transport_options"]
    assert isinstance(options, dict) and options["atomic_take"] is False
    _publish(server.url, "a", {"n": 1})
    received: list[Any] = []
    conn = _consumer(server.url, ["a"], received, atomic_take=False)
    _drain(conn, received, 1)
    client = redis.Redis.from_url(server.url)
    _wait_blocked_in(conn, client, "brpop")
    assert received == [{"n": 1}] and client.hlen("unacked") == 0
    conn.close()
    client.close()


def test_redis_version_reads_the_numeric_prefix() -> None:
    assert ours.redis_version("7.0.15") == (7, 0, 15) >= ours.MIN_VERSION
    assert ours.redis_version("6.0.16") < ours.MIN_VERSION
    assert ours.redis_version("6.2.0-rc1") == (6, 2)


def test_a_real_worker_consumes_through_the_take_and_answers_remote_control(
    celery_worker: Any, celery_app: Any
) -> None:
    from lewis_tasks.producer import submit

    channel = celery_worker.consumer.task_consumer.channel
    assert isinstance(channel, ours.Channel) and channel._takes()
    assert (
        submit("lewis.control.heartbeat", kwargs={"slot": 31337}).wait(timeout=20)["slot"] == 31337
    )
    # pidbox (fanout) and the reply queue (no ack) on kombu's path: inspect ping answers
    replies = celery_app.control.inspect(destination=[celery_worker.hostname], timeout=5).ping()
    assert replies == {celery_worker.hostname: {"ok": "pong"}}


@pytest.mark.parametrize("refused", ["-blmove", "-info"])
def test_a_server_refusing_the_take_or_its_version_gets_kombus_path(
    server: EmbeddedRedis, refused: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Redis user that may not wait with BLMOVE, or not ask the server's version (ACL)
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser(
        "worker",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", refused],
    )
    url = server.url.replace("redis://", "redis://worker:pw@")
    _publish(server.url, "a", {"n": 1})
    received: list[Any] = []
    with caplog.at_level(logging.WARNING, logger=ours.__name__):
        conn = _consumer(url, ["a"], received)
        _drain(conn, received, 1)
        _wait_blocked_in(conn, admin, "brpop")
    # Then it consumes all the same, the kombu way, and says why once
    assert received == [{"n": 1}]
    assert len(caplog.records) == 1 and "kombu's BRPOP" in caplog.text
    assert admin.hlen("unacked") == 0 and admin.llen("a") == 0
    conn.close()
    admin.close()
