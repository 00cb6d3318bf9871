"""kombu's Redis transport, with two changes for workers: one client object per channel, and
channels that still reach their broker after their connection was torn down.

One client per channel: kombu builds a fresh ``redis.Redis`` for every unacked-bookkeeping
pipeline (each message received and each ack), and with redis-py 8 building one costs more
than the round trip: in a py-spy profile of an io worker draining no-ops, ~18 % of the
consumer thread went to ``Redis.__init__``. A ``redis.Redis`` on a connection pool is
thread-safe and holds no connection of its own, so one per channel (and per pool, since kombu
replaces pools on reconnect) serves every such operation.

Connection parameters kept per channel (issue 12, docs/upstream/kombu-restore-hostname.md):
when the broker goes away with a task in flight, Celery's consumer calls
``Connection.collect()`` and then ``Connection.close()``. ``collect()`` fails to close the
channel (its pending BRPOP read raises, Redis being down) but detaches the transport from the
connection (``transport.client = None``); ``close()`` then closes the channel, whose
``restore_unacked`` rebuilds the pool it just dropped from ``transport.client.hostname`` —
``AttributeError``, not a connection error, so the threads/solo worker ends with
"Unrecoverable error". The late ack of the task still running hits the same path. Here a
channel computes its connection parameters once, while attached, and rebuilds pools from
them: the restore and the ack then reach the broker if it is back, or fail with the
connection error kombu and Celery expect (the message stays in ``unacked`` and the
visibility sweep brings it back). Everything else is kombu's transport unchanged.

Atomic take (issue 12, docs/atomic-unacked.md): kombu takes a message with BRPOP and records
it in ``unacked`` a round trip later (``QoS.append``); a worker killed in between loses it,
acks_late or not. Here a consumer with acks takes with one Lua script that pops the message
and records it under its own delivery tag, so it is at every instant in a queue or in
``unacked``; an idle consumer waits with ``BLMOVE key key LEFT LEFT`` (moves a message onto
itself: waits without taking) on the first key for at most a second, then takes again.
Fanout (pidbox, broadcast) and no-ack consumers keep kombu's path, and so does a Redis older
than 6.2 (no BLMOVE) or one that refuses the take (an ACL): one warning.

Selected by ``broker_transport`` for ``redis://`` brokers (signals.py, workers only).
"""

from __future__ import annotations

import hashlib
import logging
import os
from queue import Empty
from time import monotonic, time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import NoScriptError

log = logging.getLogger(__name__)

# KEYS: the unacked hash, the unacked index, then the queue lists in the order BRPOP would try
# them. ARGV[1]: the index score (the consumer's clock, as QoS.append writes it); ARGV[2]: the
# most messages to take (what the consumer's prefetch still allows, capped by take_batch);
# ARGV[3]: the share, a take bringing at most 1/share of what waits on its keys (at least one:
# the count taken first also tells whether any list still holds a message afterwards),
# so a short queue (a scan's few chunks) is left for the other idle workers, woken by the same
# push, to share, while a deep one (a drain) goes ``take_batch`` at a time.
# Pops first: a write after it is never refused for memory (Redis lets a script that wrote go
# on), and the stored triple is kombu's ``[payload, exchange, routing_key]`` with the payload
# verbatim. Returns whether any list still holds a message (if none, the next take waits
# first: no empty take in between), then for each message taken its key's position, the
# payload and the tag it was recorded under ('' for a message without a string delivery tag:
# returned unrecorded, QoS.append records it); false if every list was empty.
TAKE = """
local waiting = 0
for j = 3, #KEYS do
  waiting = waiting + redis.call('LLEN', KEYS[j])
end
local most = tonumber(ARGV[2]) or 1
local share = tonumber(ARGV[3]) or 1
most = math.max(1, math.min(most, math.floor(waiting / share)))
local taken = {0}
local i = 3
while i <= #KEYS and #taken < 1 + 3 * most do
  local payload = redis.call('RPOP', KEYS[i])
  if payload then
    local ok, message = pcall(cjson.decode, payload)
    local properties = ok and type(message) == 'table' and message['properties']
    local tag = type(properties) == 'table' and properties['delivery_tag']
    if type(tag) ~= 'string' then
      tag = ''
    else
      local info = properties['delivery_info']
      if type(info) ~= 'table' then
        info = {}
      end
      redis.call('ZADD', KEYS[2], ARGV[1], tag)
      redis.call('HSET', KEYS[1], tag, '[' .. payload .. ',' .. cjson.encode(info['exchange'])
                 .. ',' .. cjson.encode(info['routing_key']) .. ']')
    end
    taken[#taken + 1] = i - 2
    taken[#taken + 1] = payload
    taken[#taken + 1] = tag
  else
    i = i + 1
  end
end
if #taken == 1 then
  return false
end
if waiting > (#taken - 1) / 3 then
  taken[1] = 1
end
return taken
"""
TAKE_SHA = hashlib.sha1(TAKE.encode()).hexdigest()
MIN_VERSION = (6, 2)  # BLMOVE
TAKE_SHARE = 4  # a take brings at most a quarter of what waits (see TAKE)
IDLE_WAIT_S = 1.0  # an idle consumer looks at every key at least this often


def redis_version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` -> ``(7, 0, 15)``; an unreadable part ends the tuple."""
    parts: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def redis_where(params: dict[str, Any]) -> tuple[tuple[Any, ...], int]:
    """Which Redis server, and which of its databases, connection ``params`` (redis-py's) reach."""
    server = (params.get("path"), params.get("host"), params.get("port"))
    return server, int(params.get("db") or 0)


class Settlements:
    """Late acks made by the result store's own round trip (issue 18.2).

    A task message acked late costs its worker three Redis round trips: the take, the result
    store, the ack. The channel names each message it delivers here under its task id; the
    result backend, storing that task's SUCCESS on the broker's own Redis server (any of its
    databases), takes the message out of ``unacked`` in the same script (``claim``, then
    ``settled``), and Celery's ack that follows skips its Redis round trip (``QoS.ack``). The
    message leaves ``unacked`` once its result is stored, as before, only one round trip
    sooner. Only the process that took the message settles it (a forked child, a prefork pool
    process say, starts with an empty table), and only a SUCCESS: a failure may still be
    rejected and requeued. An entry lives until the message is acked or rejected, or its
    channel closes.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, tuple[Channel, str]] = {}  # task id -> its channel, its tag
        self._tags: dict[str, str] = {}  # tag -> task id
        self._settled: set[str] = set()  # tags the store took out of unacked
        os.register_at_fork(after_in_child=self._clear)

    def _clear(self) -> None:
        self._tasks, self._tags, self._settled = {}, {}, set()

    def expect(self, task_id: str, channel: Channel, tag: str) -> None:
        self._tasks[task_id] = (channel, tag)
        self._tags[tag] = task_id

    def claim(self, task_id: str, server: tuple[Any, ...]) -> tuple[str, str, str, int] | None:
        """The unacked hash, index, tag and database of ``task_id``'s message, if it can be
        settled on the Redis ``server``."""
        entry = self._tasks.get(task_id)
        if entry is None:
            return None
        channel, tag = entry
        if channel.settle_where[0] != server:
            return None
        return (*channel.settle_keys, tag, channel.settle_where[1])

    def settled(self, tag: str) -> None:
        self._settled.add(tag)

    def done(self, tag: str) -> bool:
        """Forget ``tag`` (acked or rejected); whether its store took it out of unacked."""
        task_id = self._tags.pop(tag, None)
        if task_id is not None:
            self._tasks.pop(task_id, None)
        try:
            self._settled.remove(tag)
        except KeyError:
            return False
        return True

    def forget(self, channel: Channel) -> None:
        for task_id, (owner, tag) in list(self._tasks.items()):
            if owner is channel:
                self._tasks.pop(task_id, None)
                self._tags.pop(tag, None)
                self._settled.discard(tag)


settlements = Settlements()


class QoS(kombu_redis.QoS):  # type: ignore[misc, unused-ignore]
    def append(self, message: Any, delivery_tag: str) -> None:
        """Skip the Redis write for the message the take recorded already."""
        if delivery_tag is not None and delivery_tag == self.channel._recorded_tag:
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        """Skip the Redis write for a message its result's store took out of unacked."""
        if settlements.done(delivery_tag):
            virtual.QoS.ack(self, delivery_tag)
        else:
            super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        settlements.done(delivery_tag)
        super().reject(delivery_tag, requeue=requeue)


class Channel(kombu_redis.Channel):  # type: ignore[misc, unused-ignore]
    QoS = QoS
    from_transport_options: tuple[str, ...] = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options,
        "atomic_take",
        "take_batch",
        "settle_with_result",
    )
    atomic_take = True  # broker.atomic_take; false: kombu's BRPOP
    take_batch = 1  # broker.take_batch: the most messages one take brings
    settle_with_result = False  # broker.settle_with_result: the result store acks (Settlements)
    settle_where: tuple[tuple[Any, ...], int] = ((), 0)
    settle_keys: tuple[str, str] = ("", "")
    _shared_client: Any = None
    _shared_client_pool: Any = None
    _recorded_tag: str | None = None  # the message being delivered, already in unacked
    _take_idle = False  # the last take found nothing: wait before the next
    _take_script_loaded = False  # EVALSHA, else EVAL (which loads it)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._params: dict[bool, dict[str, Any]] = {}
        self._no_ack_queues: set[str] = set()
        # the commands sent and the keys the take tried, while its replies are due
        self._take_pending: tuple[tuple[str, ...], list[str]] | None = None
        super().__init__(*args, **kwargs)  # builds the consuming (asynchronous) pool
        params = self._connparams(asynchronous=False)  # and, while attached, the other's
        self._atomic = self.atomic_take and self.ack_emulation and self._server_takes_atomically()
        self.settle_where = redis_where(params)
        self.settle_keys = (
            self.global_keyprefix + self.unacked_key,
            self.global_keyprefix + self.unacked_index_key,
        )

    def _server_takes_atomically(self) -> bool:
        """Redis >= 6.2, asked once per transport; older: kombu's path and one warning."""
        transport = self.connection
        if transport.server_takes is None:
            try:
                version = str(self.client.info("server").get("redis_version", ""))
            except self.ResponseError:  # INFO refused (an ACL): unknown, so kombu's path
                version = ""
            transport.server_takes = redis_version(version) >= MIN_VERSION
            if not transport.server_takes:
                log.warning(
                    "Redis %s is older than 6.2: consuming with kombu's BRPOP, which "
                    "loses a message when a worker dies between taking and recording "
                    "it (docs/atomic-unacked.md)",
                    version or "of unknown version",
                )
        return bool(transport.server_takes)

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        no_ack = kwargs.get("no_ack", args[0] if args else False)
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, *args, **kwargs)

    def _basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        ret = super()._basic_cancel(consumer_tag)
        if queue not in self._tag_to_queue.values():
            self._no_ack_queues.discard(queue)
        return ret

    def _takes(self) -> bool:
        """Consume with the atomic take: every consumer here acks, and the server can."""
        return self._atomic and not self._no_ack_queues.intersection(self.active_queues)

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self._takes():
            return super()._brpop_start(timeout)
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return None
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        commands = [self._take_command(keys)]
        if self._take_idle:  # wait for the first key to fill (or a second), then take
            timeout = self.brpop_timeout if timeout is None else timeout
            wait = min(timeout, IDLE_WAIT_S) if timeout else IDLE_WAIT_S
            first = self.global_keyprefix + keys[0]
            commands.insert(0, ("BLMOVE", first, first, "LEFT", "LEFT", wait))
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        self._take_pending = (tuple(str(c[0]) for c in commands), keys)
        connection.send_packed_command(connection.pack_commands(commands))
        return None

    def _take_command(self, keys: list[str]) -> tuple[Any, ...]:
        names = [
            self.global_keyprefix + key for key in (self.unacked_key, self.unacked_index_key, *keys)
        ]
        script = ("EVALSHA", TAKE_SHA) if self._take_script_loaded else ("EVAL", TAKE)
        return (*script, len(names), *names, repr(time()), self._take_count(), TAKE_SHARE)

    def _take_count(self) -> int:
        """As many messages as prefetch still allows (kombu polls only when it allows one),
        at most ``take_batch``: one round trip brings a deep queue's next few."""
        allowed = self.qos.can_consume_max_estimate()
        most = max(1, int(self.take_batch))
        return max(1, min(most, allowed)) if allowed is not None else most

    def _brpop_read(self, **options: Any) -> bool:
        pending, self._take_pending = self._take_pending, None
        if pending is None:
            return bool(super()._brpop_read(**options))
        try:
            reply = self._read_take(pending[0], **options)
            if not reply:
                raise Empty()
            self._deliver_taken(reply, pending[1])
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()

    def _read_take(self, commands: tuple[str, ...], **options: Any) -> Any:
        """The take's reply (after the wait's, if one was sent); None if it brought nothing."""
        client, connection = self.client, self.client.connection
        replies: list[Any] = []
        try:
            for name in commands:  # every reply is read, or the next ones would be out of step
                try:
                    replies.append(client.parse_response(connection, name, **options))
                except self.ResponseError as exc:
                    replies.append(exc)
        except self.connection_errors:
            connection.disconnect()  # reconnected by the next poll, as after a failed BRPOP
            raise
        take = replies[-1]
        if isinstance(take, NoScriptError):  # a restarted Redis forgot it: EVAL loads it again
            self._take_script_loaded = False
            return None
        refused = [r for r in replies if isinstance(r, self.ResponseError)]
        if refused:  # (a take it did run is still delivered)
            self._give_up_taking(refused[0])
        if isinstance(take, self.ResponseError):
            return None
        self._take_script_loaded = True
        self._take_idle = not take or not take[0]  # no message left: wait first
        return take

    def _give_up_taking(self, error: Exception) -> None:
        """A server that refuses the take or its wait (an ACL, say): kombu's path from now."""
        self._atomic = False
        log.warning(
            "Redis refused the atomic take (%s): consuming with kombu's BRPOP, which "
            "loses a message when a worker dies between taking and recording it "
            "(docs/atomic-unacked.md)",
            error,
        )

    def _deliver_taken(self, reply: list[Any], keys: list[str]) -> None:
        """Deliver every message the take brought, in order; an error raised by one delivery is
        raised after the rest were delivered (each is in ``unacked`` already)."""
        error: BaseException | None = None
        for at in range(1, len(reply) - 2, 3):
            try:
                self._deliver_one(reply[at : at + 3], keys)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the others
                error = error or exc
        if error is not None:
            raise error

    def _deliver_one(self, taken: list[Any], keys: list[str]) -> None:
        queue = keys[int(taken[0]) - 1].rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        self._recorded_tag = tag = bytes_to_str(taken[2]) or None
        message = loads(bytes_to_str(taken[1]))
        if tag is not None and self.settle_with_result and isinstance(message, dict):
            headers = message.get("headers")
            task_id = headers.get("id") if isinstance(headers, dict) else None
            if isinstance(task_id, str):
                settlements.expect(task_id, self, tag)
        try:
            self.connection._deliver(message, queue)
        finally:
            self._recorded_tag = None

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """kombu's parameters, computed once while the transport still knows its broker."""
        params = self._params.get(asynchronous)
        if params is None:
            params = self._params[asynchronous] = super()._connparams(asynchronous=asynchronous)
        return dict(params)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the poller binds a connection to this one: never share it
            return super()._create_client(asynchronous=True)
        pool = self.pool
        if self._shared_client is None or self._shared_client_pool is not pool:
            self._shared_client = super()._create_client(asynchronous=False)
            self._shared_client_pool = pool
        return self._shared_client

    def close(self) -> None:
        try:
            super().close()
        finally:
            settlements.forget(self)
            # kombu drops the pools before restoring unacked messages, and the restore builds
            # one again: drop that too, or each lost connection leaks one.
            self._disconnect_pools()


class Transport(kombu_redis.Transport):  # type: ignore[misc, unused-ignore]
    Channel = Channel
    server_takes: bool | None = None  # the server has what the take needs (first channel asks)
