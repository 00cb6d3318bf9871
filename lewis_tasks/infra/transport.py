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
# them. ARGV[1]: the index score (the consumer's clock, as QoS.append writes it). Pops first:
# a write after it is never refused for memory (Redis lets a script that wrote go on), and
# the stored triple is kombu's ``[payload, exchange, routing_key]`` with the payload verbatim.
# Returns the key's position, the payload, the tag it was recorded under ('' for a message
# without a string delivery tag: returned unrecorded, QoS.append records it) and whether any
# list still holds a message (if none, the next take waits first: no empty take in between).
TAKE = """
for i = 3, #KEYS do
  local payload = redis.call('RPOP', KEYS[i])
  if payload then
    local more = 0
    for j = i, #KEYS do
      if redis.call('LLEN', KEYS[j]) > 0 then
        more = 1
        break
      end
    end
    local ok, message = pcall(cjson.decode, payload)
    local properties = ok and type(message) == 'table' and message['properties']
    local tag = type(properties) == 'table' and properties['delivery_tag']
    if type(tag) ~= 'string' then
      return {i - 2, payload, '', more}
    end
    local info = properties['delivery_info']
    if type(info) ~= 'table' then
      info = {}
    end
    redis.call('ZADD', KEYS[2], ARGV[1], tag)
    redis.call('HSET', KEYS[1], tag, '[' .. payload .. ',' .. cjson.encode(info['exchange'])
               .. ',' .. cjson.encode(info['routing_key']) .. ']')
    return {i - 2, payload, tag, more}
  end
end
return false
"""
TAKE_SHA = hashlib.sha1(TAKE.encode()).hexdigest()
MIN_VERSION = (6, 2)  # BLMOVE
IDLE_WAIT_S = 1.0  # an idle consumer looks at every key at least this often


def redis_version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` -> ``(7, 0, 15)``; an unreadable part ends the tuple."""
    parts: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


class QoS(kombu_redis.QoS):  # type: ignore[misc, unused-ignore]
    def append(self, message: Any, delivery_tag: str) -> None:
        """Skip the Redis write for the message the take recorded already."""
        if delivery_tag is not None and delivery_tag == self.channel._recorded_tag:
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):  # type: ignore[misc, unused-ignore]
    QoS = QoS
    from_transport_options: tuple[str, ...] = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options,
        "atomic_take",
    )
    atomic_take = True  # broker.atomic_take; false: kombu's BRPOP
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
        self._connparams(asynchronous=False)  # and, while attached, the other's parameters
        self._atomic = self.atomic_take and self.ack_emulation and self._server_takes_atomically()

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
        return (*script, len(names), *names, repr(time()))

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
        self._take_idle = not take or not take[3]  # no message left: wait first
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
        queue = keys[int(reply[0]) - 1].rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        self._recorded_tag = bytes_to_str(reply[2]) or None
        try:
            self.connection._deliver(loads(bytes_to_str(reply[1])), queue)
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
            # kombu drops the pools before restoring unacked messages, and the restore builds
            # one again: drop that too, or each lost connection leaks one.
            self._disconnect_pools()


class Transport(kombu_redis.Transport):  # type: ignore[misc, unused-ignore]
    Channel = Channel
    server_takes: bool | None = None  # the server has what the take needs (first channel asks)
