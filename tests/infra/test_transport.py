"""Our Redis channel reaches its broker after Celery tore its connection down (issue 12, item 7).

The sequence is Celery's on a lost connection: ``collect()`` then ``close()`` of a connection
whose channel holds an unacked message, a pending BRPOP and an auto-delete fanout queue
(docs/upstream/kombu-restore-hostname.md). kombu's own channel raises AttributeError there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis

from lewis_tasks.infra.redis_server import EmbeddedRedis

OURS = "lewis_tasks.infra.transport:Transport"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()


def _consume_one_unacked(url: str, transport: str | None) -> tuple[kombu.Connection, list[Any]]:
    queue = kombu.Queue("work", routing_key="work")
    with kombu.Connection(url) as producer:
        producer.Producer().publish({"n": 1}, routing_key="work", declare=[queue])
    conn = kombu.Connection(url, transport=transport)
    received: list[Any] = []
    broadcast = kombu.Queue("work.broadcast", kombu.Exchange("work.broadcast", "fanout"),
                            auto_delete=True)
    kombu.Consumer(conn.default_channel, [queue, broadcast],
                   callbacks=[lambda body, message: received.append(message)]).consume()
    conn.drain_events(timeout=5)
    assert len(received) == 1
    with contextlib.suppress(TimeoutError):  # the next BRPOP is now outstanding, as in a
        conn.drain_events(timeout=0.1)  # worker waiting for work
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


def test_our_channel_restores_the_unacked_message_once_redis_is_back(
        server: EmbeddedRedis) -> None:
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
        server: EmbeddedRedis) -> None:
    conn, _ = _consume_one_unacked(server.url, OURS)
    _kill(server)
    conn.collect()
    conn.close()  # a connection error, swallowed by kombu: no AttributeError
    # the message stays in unacked, where the visibility sweep finds it
    server.start()
    client = redis.Redis.from_url(server.url)
    assert client.hlen("unacked") == 1
    client.close()
