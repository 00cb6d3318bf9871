"""The Redis result backend, with a result stored in one round trip instead of two.

Celery's key-value backend reads a task's current state before writing the new one (so a
lost duplicate cannot overwrite a SUCCESS), then writes and publishes it: two round trips
per task, and a window between them. Here one Lua script does the read, the conditional
write and the publish atomically — same rule, no window, half the round trips. A task's
SUCCESS stored on the broker's own Redis also settles its message's late ack in that script
(transport.Settlements): one round trip fewer per task. Everything else (chords, groups,
result consumers, expiry) is Celery's RedisBackend unchanged.

Selected with ``result_backend = "lewis_tasks.infra.result_backend.LewisRedisBackend+redis://…"``.
"""

from __future__ import annotations

import collections
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str
from redis.exceptions import NoScriptError, ResponseError

from .transport import redis_where, settlements

log = logging.getLogger(__name__)

# KEYS[1] result key; with KEYS[2], KEYS[3] (the broker's unacked hash and index) the task's
# message, tagged ARGV[3], is taken out of unacked too: its late ack, settled in this round
# trip (transport.Settlements). ARGV: payload, expiry seconds (0: none)[, tag, the broker's
# database, the results' database]: on another database of the same server the script selects
# the broker's for the ack and then the results' again (a script's SELECT leaves the caller's
# connection alone since Redis 7; before, the second SELECT restores it).
_STORE = """
local stored = 1
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then stored = 0 end
end
if stored == 1 then
  local ttl = tonumber(ARGV[2])
  if ttl > 0 then
    redis.call('SETEX', KEYS[1], ttl, ARGV[1])
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
  redis.call('PUBLISH', KEYS[1], ARGV[1])
end
if #KEYS == 3 then
  local moved = ARGV[4] ~= ARGV[5]
  if moved then redis.call('SELECT', ARGV[4]) end
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('HDEL', KEYS[2], ARGV[3])
  if moved then redis.call('SELECT', ARGV[5]) end
end
return stored
"""


class _Spare:
    """Connections to the results' Redis that no thread is using, for any thread to take.

    A deque's ``pop`` and ``append`` are atomic, so taking one needs no lock (redis-py's pool
    takes one per command, which 100 io threads queue on). As many are made as were ever in
    use at once, as with that pool; a forked child starts with none of its parent's."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._free: collections.deque[Any] = collections.deque()
        self._pid = os.getpid()

    def take(self) -> Any:
        if self._pid != os.getpid():
            self._free, self._pid = collections.deque(), os.getpid()
        try:
            return self._free.pop()
        except IndexError:
            return self._make()

    def give(self, conn: Any) -> None:
        self._free.append(conn)

    def close(self) -> None:
        """Disconnect every spare (its backend is gone)."""
        while self._free:
            self._free.pop().disconnect()


class LewisRedisBackend(RedisBackend):  # type: ignore[misc, unused-ignore]
    """RedisBackend whose task results are stored by one atomic script call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._store_script = self.client.register_script(_STORE)
        pool = self.client.connection_pool  # its settings; the spares are not its connections
        self._spare = _Spare(lambda: pool.connection_class(**pool.connection_kwargs))
        weakref.finalize(self, self._spare.close)  # not left for the GC to close unannounced
        self._server, self._db = redis_where(pool.connection_kwargs)
        self._settles = True  # until the server refuses the ack's part (an ACL, say)

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        value = self._value(task_id, result, state, traceback, request)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        key = self.get_key_for_task(task_id)
        settle = None
        if self._settles and state == states.SUCCESS and getattr(request, "id", None) == task_id:
            settle = settlements.claim(task_id, self._server)  # this task's own message
        self.ensure(self._store, (key, value, int(expires or 0), settle))
        return result

    def store_successes(self, results: Sequence[tuple[str, Any]]) -> list[tuple[str, Exception]]:
        """Store many tasks' SUCCESS in one round trip (a packed message's calls): each by the
        same script as :meth:`store_result`, pipelined. Returns the calls it could not store
        (a value over Redis's size), each with its error, for the caller to fail alone."""
        items: list[tuple[str, Any, int]] = []
        refused: list[tuple[str, Exception]] = []
        expires = int(self.expires or 0)
        for task_id, result in results:
            try:
                value = self._value(task_id, self.encode_result(result, states.SUCCESS))
            except BackendStoreError as exc:
                refused.append((task_id, exc))
                continue
            items.append((self.get_key_for_task(task_id), value, expires))
        if items:
            self.ensure(self._store_many, (items,))
        return refused

    def _value(
        self, task_id: str, result: Any, state: str = states.SUCCESS, traceback: Any = None,
        request: Any = None,
    ) -> Any:  # fmt: skip
        """The stored form of a task's state: Celery's meta, encoded; too large for Redis: a
        BackendStoreError, as Celery's own backend raises."""
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        return value

    def _evalsha(self, keys: list[str], args: list[Any]) -> Any:
        """The store script, sent and read on a spare connection: one command per task needs
        none of the client's per-command work (a connection taken from its pool and given back
        under a lock, retry and event hooks): ~70 of the ~170 µs of CPU a call costs through it
        (redis-py 8.2; BENCHMARKS.md 18.2). Celery's ``ensure`` still retries a lost
        connection; the next call takes or makes another."""
        conn = self._spare.take()
        command = ("EVALSHA", self._store_script.sha, len(keys), *keys, *args)
        try:
            try:
                conn.send_command(*command)
                reply = conn.read_response()
            except NoScriptError:  # a restarted server, or SCRIPT FLUSH: load it, call again
                self.client.script_load(_STORE)
                conn.send_command(*command)
                reply = conn.read_response()
        except ResponseError:  # the server's answer, read whole: the connection stays good
            self._spare.give(conn)
            raise
        except BaseException:  # lost, timed out or cut off mid-reply: never reused
            conn.disconnect()
            raise
        self._spare.give(conn)
        return reply

    def _store_many(self, items: Sequence[tuple[str, Any, int]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, value, expires in items:
            self._store_script(keys=[key], args=[value, expires], client=pipe)
        pipe.execute()

    def _store(
        self,
        key: str,
        value: str,
        expires: int,
        settle: tuple[str, str, str, int] | None = None,
    ) -> None:
        """Store, and settle the message's ack too when ``settle`` names it."""
        if settle is None:
            self._evalsha([key], [value, expires])
            return
        unacked, index, tag, db = settle
        try:
            self._evalsha([key, unacked, index], [value, expires, tag, db, self._db])
        except ResponseError as exc:  # the ack's part refused (NOPERM: the results' user may
            # not touch the broker's keys or database) if the store alone then succeeds
            self._evalsha([key], [value, expires])
            self._settles = False
            log.warning(
                "Redis refused to ack a task's message with its result (%s): results are "
                "stored alone from now, and Celery acks each message itself",
                exc,
            )
            return
        settlements.settled(tag)


def backend_url(url: str) -> str:
    """``url`` of a Redis result store, as the setting that selects this backend."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return f"{__name__}.LewisRedisBackend+{url}"
    return url
