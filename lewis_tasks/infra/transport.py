"""kombu's Redis transport, with one client object per channel instead of one per operation.

kombu builds a fresh ``redis.Redis`` for every unacked-bookkeeping pipeline (each message
received and each ack), and with redis-py 8 building one costs more than the round trip: in a
py-spy profile of an io worker draining no-ops, ~18 % of the consumer thread went to
``Redis.__init__``. A ``redis.Redis`` on a connection pool is thread-safe and holds no
connection of its own, so one per channel (and per pool, since kombu replaces pools on
reconnect) serves every such operation. Everything else is kombu's transport unchanged.

Selected by ``broker_transport`` for ``redis://`` brokers (celery_app.py).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):  # type: ignore[misc, unused-ignore]
    _shared_client: Any = None
    _shared_client_pool: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the poller binds a connection to this one: never share it
            return super()._create_client(asynchronous=True)
        pool = self.pool
        if self._shared_client is None or self._shared_client_pool is not pool:
            self._shared_client = super()._create_client(asynchronous=False)
            self._shared_client_pool = pool
        return self._shared_client


class Transport(kombu_redis.Transport):  # type: ignore[misc, unused-ignore]
    Channel = Channel
