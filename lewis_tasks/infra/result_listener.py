"""Task results by push, on one Redis connection per producing thread (RESP3).

Celery's way to wait for a result costs the producer ~1 ms of Python and three round trips per
task: SUBSCRIBE through its result consumer, a GET of the state before waiting, UNSUBSCRIBE
after. Here:

* **Sent and awaited on one connection.** Where the results live on the broker's Redis server
  (any database: channels are server-wide), :meth:`ResultListener.push` writes the result's
  SUBSCRIBE and the task's LPUSH in one write on one connection. Redis runs them in that order,
  so the subscription exists before the task does: the worker's store (SET and PUBLISH in one
  script, ``result_backend.py``) always reaches this connection, and the wait is a read of the
  socket — no GET.
* **Anything else subscribes, then reads.** A task this thread did not send this way
  (``submit_many``, another thread, Celery's ``send_task``, results on another server) is
  awaited by SUBSCRIBE and GET in one write, in that order: a result stored before the
  subscription is read, one stored after is pushed.
* **A push is lost only with its connection**, which drops every subscription: the listener
  then starts afresh and the next wait subscribes and reads again. The key is also read again
  after ``interval`` seconds without the push.
* **Results of tasks nobody waits on yet** are kept (the last :data:`KEEP` per thread) and
  their channels unsubscribed with the next write. A wait that finds nothing kept subscribes
  and reads, so forgetting one is never wrong, only a round trip slower.

One listener per thread and pair of URLs (a connection is never shared between threads, so
there are no locks); a forked child starts its own. RESP3 (a subscribed connection that still
runs commands) needs Redis ≥ 6, as every Redis client of this project (redis-py's default).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any

import redis
from redis.connection import parse_url

from .results import READY, RESULT_KEY, decode_meta

KEEP = 10_000  # results that came before their wait, kept per thread
SUBSCRIBED_MAX = 10_000  # pushes beyond this many unawaited tasks: their wait subscribes itself
_BACKOFF_MAX = 1.0  # seconds between attempts while the results server is unreachable

_local = threading.local()


def channel(task_id: str) -> bytes:
    """The result key of ``task_id``, which is also the channel its states are published on."""
    return RESULT_KEY.format(task_id=task_id).encode()


_SERVER_KEYS = ("host", "port", "path", "username", "password", "connection_class")


def _same(ka: dict[str, Any], kb: dict[str, Any]) -> bool:
    return all(ka.get(k) == kb.get(k) for k in _SERVER_KEYS)


def same_server(a: str, b: str) -> bool:
    """True if Redis URLs ``a`` and ``b`` name one server as one user, over the same
    transport (TCP, TLS or a Unix socket); the db may differ."""
    return _same(parse_url(a), parse_url(b))


class ResultListener:
    """One thread's connection for sending tasks and waiting on their results."""

    def __init__(
        self, results_url: str, broker_url: str | None = None, connect_timeout: float = 5.0
    ) -> None:
        results = parse_url(results_url)
        broker = parse_url(broker_url) if broker_url is not None else None
        self.pushes = broker is not None and _same(results, broker)
        self.url = broker_url if self.pushes and broker_url else results_url
        connected = broker if self.pushes and broker is not None else results
        self._db = int(connected.get("db") or 0)
        self._results_db = int(results.get("db") or 0)
        self._connect_timeout = connect_timeout
        self._conn: Any = None
        self._pool: Any = None
        self._pid = os.getpid()
        self._subscribed: set[bytes] = set()
        self._kept: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self._unsubscribe: list[bytes] = []
        self._confirmed: Any = None  # the channel of the last SUBSCRIBE Redis confirmed

    # --- the connection ----------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._pid != os.getpid():  # a forked child: the socket and its subscriptions are
            self._conn = None  # the parent's (redis-py closes only its own copy of the fd)
            self._subscribed.clear()
            self._kept.clear()
            self._unsubscribe.clear()
            self._pid = os.getpid()
        if self._conn is None:
            pool = redis.ConnectionPool.from_url(
                self.url,
                protocol=3,
                socket_connect_timeout=self._connect_timeout,
                socket_timeout=max(self._connect_timeout, 5.0),
            )
            conn: Any = pool.make_connection()
            conn.connect()
            conn._parser.set_pubsub_push_handler(self._on_push)  # as redis-py's own PubSub
            self._conn, self._pool = conn, pool  # the pool kept with its one connection
        return self._conn

    def _reset(self) -> None:
        """The connection failed: drop it with every subscription it held."""
        conn, self._conn = self._conn, None
        self._subscribed.clear()
        self._unsubscribe.clear()
        if conn is not None:
            conn.disconnect()

    def _on_push(self, response: list[Any]) -> list[Any]:
        """Redis's pushes as they are read: a channel's message is a stored state."""
        if len(response) >= 2 and response[0] in (b"subscribe", "subscribe"):
            self._confirmed = response[1]
        elif len(response) >= 3 and response[0] in (b"message", "message"):
            try:
                meta = decode_meta(response[2])
            except (ValueError, TypeError):  # not kombu's JSON: not a state of ours
                meta = None
            if meta is not None and meta.get("status") in READY:
                chan = response[1] if isinstance(response[1], bytes) else str(response[1]).encode()
                self._keep(chan, meta)
        return response

    def _keep(self, chan: bytes, meta: dict[str, Any]) -> None:
        self._kept[chan] = meta
        self._kept.move_to_end(chan)
        while len(self._kept) > KEEP:
            self._kept.popitem(last=False)
        if chan in self._subscribed:
            self._subscribed.discard(chan)
            self._unsubscribe.append(chan)

    def _send(self, conn: Any, commands: list[tuple[Any, ...]]) -> None:
        """Write ``commands`` after the UNSUBSCRIBEs owed (their replies are pushes)."""
        if self._unsubscribe:
            commands = [("UNSUBSCRIBE", *self._unsubscribe), *commands]
            self._unsubscribe = []
        conn.send_packed_command(conn.pack_commands(commands))

    def _drain(self, conn: Any) -> None:
        """Read what has come already (results; or the server closing the connection)."""
        while conn.can_read(timeout=0):
            conn.read_response(push_request=True)

    def _read_commands(self, chan: bytes) -> list[tuple[Any, ...]]:
        if self._db == self._results_db:
            return [("GET", chan)]
        return [("SELECT", self._results_db), ("GET", chan), ("SELECT", self._db)]

    def _read_replies(self, conn: Any) -> dict[str, Any] | None:
        """The replies of :meth:`_read_commands`: the stored meta if the task has ended."""
        if self._db == self._results_db:
            raw = conn.read_response()
        else:
            conn.read_response()
            raw = conn.read_response()
            conn.read_response()
        meta = decode_meta(raw)
        return meta if meta is not None and meta.get("status") in READY else None

    # --- sending ----------------------------------------------------------------------------

    def push(self, key: str, message: str, task_id: str) -> None:
        """LPUSH ``message`` onto ``key`` (broker's db), subscribed first to ``task_id``'s
        result when this thread holds fewer than SUBSCRIBED_MAX unawaited ones. Only where
        :attr:`pushes` (results on the broker's server). Connection errors propagate, with
        the listener reset: the caller decides whether the message may have gone."""
        chan = channel(task_id)
        subscribe = len(self._subscribed) < SUBSCRIBED_MAX
        try:
            conn = self._connection()
            try:
                self._drain(conn)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._reset()  # closed while idle (a Redis restart): nothing sent yet, anew
                conn = self._connection()
            commands: list[tuple[Any, ...]] = [("SUBSCRIBE", chan)] if subscribe else []
            self._send(conn, [*commands, ("LPUSH", key, message)])
            try:
                conn.read_response()  # LPUSH's count; SUBSCRIBE's reply is a push
            except redis.ResponseError:
                if not subscribe or self._confirmed == chan:
                    raise  # LPUSH's own error: nothing sent, the replies still in step
                # SUBSCRIBE refused (an ACL on channels), LPUSH's reply next: the task went,
                # its wait subscribes again and says why it cannot
                conn.read_response()
                subscribe = False
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._reset()
            raise
        if subscribe:
            self._subscribed.add(chan)

    # --- waiting ----------------------------------------------------------------------------

    def wait(
        self, task_id: str, timeout: float | None, interval: float = 1.0
    ) -> dict[str, Any] | None:
        """``task_id``'s stored meta once it has ended (succeeded, failed, revoked); None if it
        has not after ``timeout`` seconds. ``interval``: the longest a lost push can delay it."""
        chan = channel(task_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            meta = self._kept.pop(chan, None)
            if meta is not None:
                return meta
            left = None if deadline is None else deadline - time.monotonic()
            try:
                conn = self._connection()
                if chan not in self._subscribed:
                    self._send(conn, [("SUBSCRIBE", chan), *self._read_commands(chan)])
                    self._subscribed.add(chan)
                    meta = self._read_replies(conn)
                elif left is not None and left <= 0:
                    return None
                else:
                    step = interval if left is None else min(interval, left)
                    if self._listen(conn, chan, step):
                        continue  # kept: returned at the top
                    self._send(conn, self._read_commands(chan))  # no push in time: read
                    meta = self._read_replies(conn)
                failures = 0
            except redis.ResponseError:
                self._reset()  # an error reply may leave the rest unread: never reuse it
                raise
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._reset()
                failures += 1
                pause = min(_BACKOFF_MAX, 0.05 * 2**failures)
                if left is not None and left <= pause:
                    return None
                time.sleep(pause)
                continue
            if meta is not None:
                self._keep(chan, meta)  # unsubscribed with the next write
                continue
            if left is not None and left <= 0:
                return None

    def _listen(self, conn: Any, chan: bytes, seconds: float) -> bool:
        """Read pushes until ``chan``'s result is kept or ``seconds`` pass; True if kept."""
        end = time.monotonic() + seconds
        while chan not in self._kept:
            left = end - time.monotonic()
            if left <= 0:
                return False
            if conn.can_read(timeout=left):
                conn.read_response(push_request=True)
        return True


def listener(
    results_url: str, broker_url: str | None = None, connect_timeout: float = 5.0
) -> ResultListener:
    """This thread's listener for results at ``results_url`` (of tasks sent to ``broker_url``).
    It connects on first use."""
    key = (results_url, broker_url)
    listeners: dict[tuple[str, str | None], ResultListener] = _local.__dict__.setdefault(
        "listeners", {}
    )
    found = listeners.get(key)
    if found is None:
        found = listeners[key] = ResultListener(results_url, broker_url, connect_timeout)
    return found


__all__ = ["KEEP", "SUBSCRIBED_MAX", "ResultListener", "channel", "listener", "same_server"]
