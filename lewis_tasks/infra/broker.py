"""Broker probes: true queue depth on Redis, and worker liveness through the broker.

Queue depth on kombu's Redis transport is not one ``LLEN``: messages of priority > 0 sit in
sub-lists (``<queue>\\x06\\x16<pri>``), and delivered-but-unacked messages (prefetched or
running) sit in the ``unacked`` hash until acked or restored. Scaling on a plain LLEN
under-counts; :func:`queue_depths` reports ready and unacked separately.

Liveness is a ``ping`` broadcast that round-trips through the broker (a live PID proves
nothing: workers have stopped consuming after a reconnect and kept running).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from .routing import PRIORITY_SEP, PRIORITY_STEPS, QUEUES

if TYPE_CHECKING:
    from celery import Celery

UNACKED_KEY = "unacked"


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    ready: int
    unacked: int

    @property
    def total(self) -> int:
        return self.ready + self.unacked

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "ready": self.ready,
            "unacked": self.unacked,
            "total": self.total,
        }


def queue_depths(client: redis.Redis, queues: Iterable[str] = QUEUES) -> dict[str, QueueDepth]:
    """Ready (all priority sub-lists) and unacked messages per queue."""
    queues = list(queues)
    pipe = client.pipeline(transaction=False)
    for q in queues:
        for pri in PRIORITY_STEPS:
            pipe.llen(q if pri == 0 else f"{q}{PRIORITY_SEP}{pri}")
    lengths = pipe.execute()
    ready = {
        q: sum(lengths[i * len(PRIORITY_STEPS) : (i + 1) * len(PRIORITY_STEPS)])
        for i, q in enumerate(queues)
    }
    unacked = dict.fromkeys(queues, 0)
    for _tag, raw in client.hscan_iter(UNACKED_KEY, count=1000):
        queue = _queue_of_unacked(raw)
        if queue in unacked:
            unacked[queue] += 1
    return {q: QueueDepth(q, ready[q], unacked[q]) for q in queues}


def _queue_of_unacked(raw: bytes) -> str | None:
    try:
        payload, exchange, routing_key = json.loads(raw)
    except (ValueError, TypeError):
        return None
    info = (payload.get("properties") or {}).get("delivery_info") or {}
    return info.get("routing_key") or routing_key or exchange


@dataclass(frozen=True)
class WorkerPing:
    worker: str
    rtt_ms: float
    queues: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "rtt_ms": round(self.rtt_ms, 3), "queues": list(self.queues)}


def broadcast(
    app: Celery,
    command: str,
    *,
    timeout: float,
    arguments: dict[str, Any] | None = None,
    destination: list[str] | None = None,
    limit: int | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """``{worker: reply}`` of a remote-control broadcast, sent on a connection of its own.

    Its own, because on kombu's Redis transport a broadcast that ends by timeout (as one to
    workers not yet known must) leaves a read pending on its connection, and the replies to the
    next broadcast on it come late or not at all (seen here: every second ping on a shared
    connection answered by nobody).
    """
    with app.connection_for_write() as connection:
        replies = (
            app.control.broadcast(
                command,
                arguments=arguments or {},
                destination=destination,
                reply=True,
                timeout=timeout,
                limit=limit,
                connection=connection,
                callback=callback,
            )
            or []
        )
    out: dict[str, Any] = {}
    for reply in replies:
        out.update(reply)
    return out


def ping_workers(app: Celery, timeout: float = 1.0, with_queues: bool = True) -> list[WorkerPing]:
    """Every worker that answers a broker round-trip ping within ``timeout``, with its queues."""
    rtts: dict[str, float] = {}
    sent = time.perf_counter()

    def on_reply(reply: dict[str, Any]) -> None:
        for name in reply:
            rtts.setdefault(name, (time.perf_counter() - sent) * 1000)

    broadcast(app, "ping", timeout=timeout, callback=on_reply)
    queues: dict[str, tuple[str, ...]] = {}
    if with_queues and rtts:
        replies = broadcast(
            app, "active_queues", timeout=timeout, destination=list(rtts), limit=len(rtts)
        )
        queues = {w: tuple(sorted(q["name"] for q in qs)) for w, qs in replies.items()}
    return [WorkerPing(w, rtts[w], queues.get(w, ())) for w in sorted(rtts)]


STRAGGLER_FACTOR = 4.0  # after the first reply, the others get this many times its round trip,
STRAGGLER_FLOOR = 0.05  # at least this long (s): a reply a few ms behind is no straggler,
STRAGGLER_CAP = 0.25  # and at most this long (s): a slow worker cannot hold up the answer


@dataclass(frozen=True)
class PingRound:
    """One ping broadcast's outcome: who answered (and how fast), and the expected workers
    that had not answered when it stopped waiting (``late``)."""

    pings: list[WorkerPing]
    late: list[str]
    waited_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "workers": [p.to_dict() for p in self.pings],
            "late": list(self.late),
            "waited_ms": round(self.waited_ms, 1),
        }


def straggler_window(first_rtt_s: float) -> float:
    """Seconds the other workers get after the first reply: a few of its round trips, bounded."""
    return min(STRAGGLER_CAP, max(STRAGGLER_FLOOR, STRAGGLER_FACTOR * first_rtt_s))


def ping_round(app: Celery, expected: Mapping[str, Iterable[str]], timeout: float) -> PingRound:
    """Ping every worker through the broker; stop as soon as every ``expected`` worker (name →
    the queues it consumes, from its presence record) answered, else once the stragglers'
    window (:func:`straggler_window`) after the first reply has passed, else after
    ``timeout`` when nobody answers. Queues come from ``expected``; a worker that answered
    without a record is asked for its ``active_queues``.

    kombu's broadcast waits ``timeout`` after the LAST reply (it cannot know how many will
    come): every ``lewis status`` paid it in full. Here kombu's mailbox publishes the ping and
    :func:`_collect_until` reads the replies with a deadline that moves.
    """
    from kombu.utils.uuid import uuid

    rtts: dict[str, float] = {}
    sent = time.perf_counter()

    def on_reply(reply: dict[str, Any]) -> None:
        for name in reply:
            rtts.setdefault(name, time.perf_counter() - sent)

    def deadline() -> float:
        if not rtts:
            return sent + timeout
        first = min(rtts.values())
        return min(sent + timeout, sent + first + straggler_window(first))

    with app.connection_for_write() as connection:  # its own: see broadcast()
        mailbox = app.control.mailbox(connection)
        channel = connection.default_channel
        ticket = uuid()
        mailbox._publish(
            "ping",
            {},
            reply_ticket=ticket,
            channel=channel,
            timeout=timeout,
            serializer=mailbox.serializer,
        )
        _collect_until(
            mailbox,
            connection,
            channel,
            ticket,
            on_reply,
            deadline,
            done=lambda: bool(expected) and set(expected) <= set(rtts),
        )
    waited = (time.perf_counter() - sent) * 1000
    queues = {w: tuple(sorted(q)) for w, q in expected.items() if w in rtts}
    unknown = [w for w in rtts if w not in expected]
    if unknown:
        replies = broadcast(
            app, "active_queues", timeout=timeout, destination=unknown, limit=len(unknown)
        )
        queues.update({w: tuple(sorted(q["name"] for q in qs)) for w, qs in replies.items()})
    pings = [WorkerPing(w, rtts[w] * 1000, queues.get(w, ())) for w in sorted(rtts)]
    return PingRound(pings, sorted(set(expected) - set(rtts)), waited)


def _collect_until(
    mailbox: Any,
    connection: Any,
    channel: Any,
    ticket: str,
    on_reply: Callable[[dict[str, Any]], None],
    deadline: Callable[[], float],
    done: Callable[[], bool],
) -> None:
    """kombu's ``Mailbox._collect`` (the replies to ``ticket`` on the mailbox's reply queue),
    reading until ``done()`` or ``deadline()`` (time.perf_counter), both asked again after
    every reply. The reply queue is dropped at the end, as kombu does (replies after it are
    lost: a second collect on the same ticket would see nothing)."""
    from kombu import Consumer

    queue = mailbox.reply_queue
    consumer = Consumer(channel, [queue], accept=mailbox.accept, no_ack=True)

    def on_message(body: Any, message: Any) -> None:
        header = message.headers.get
        mailbox.clock.adjust(header("clock") or 0)
        expires = header("expires")
        if expires and time.time() > expires:
            return
        if header("ticket", ticket) == ticket and isinstance(body, dict):
            on_reply(body)

    consumer.register_callback(on_message)
    try:
        with consumer:
            while not done():
                left = deadline() - time.perf_counter()
                if left <= 0:
                    break
                try:
                    connection.drain_events(timeout=left)
                except TimeoutError:  # socket.timeout
                    break
    finally:
        channel.after_reply_message_received(queue.name)


def live_workers(app: Celery, timeout: float = 0.5) -> set[str]:
    """Names of the workers answering a ping now (one broadcast on its own connection)."""
    return set(broadcast(app, "ping", timeout=timeout))


def wait_for_workers(
    app: Celery,
    ready: Callable[[set[str]], bool],
    timeout: float,
    check: Callable[[], None] | None = None,
    poll: float = 0.3,
) -> set[str]:
    """Ping until ``ready(names)`` holds; TimeoutError after ``timeout`` seconds.

    ``check`` runs between pings and may raise (e.g. a child process that already died).
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        names = live_workers(app)
        if ready(names):
            return names
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"workers not ready within {timeout:.0f}s (answering: "
                f"{', '.join(sorted(names)) or 'none'})"
            )
        time.sleep(poll)


def workers_by_queue(pings: Iterable[WorkerPing]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {q: [] for q in QUEUES}
    for ping in pings:
        for q in ping.queues:
            out.setdefault(q, []).append(ping.worker)
    return out
