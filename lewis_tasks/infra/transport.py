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

Selected by ``broker_transport`` for ``redis://`` brokers (signals.py, workers only).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):  # type: ignore[misc, unused-ignore]
    _shared_client: Any = None
    _shared_client_pool: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._params: dict[bool, dict[str, Any]] = {}
        super().__init__(*args, **kwargs)  # builds the consuming (asynchronous) pool
        self._connparams(asynchronous=False)  # and, while attached, the other's parameters

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
