"""A Redis barrier: N parties (load-test parts on N worker processes) start together.

Each party adds its id to a set; the one that completes the set fixes a start time a little
in the future on *Redis's* clock and hands it to every waiter through a list they block on.
Each waiter converts that time to its own clock (offset measured with ``TIME``), so parts on
machines whose clocks disagree still start at the same instant. Keys expire on their own.

A stable party id (say, task id + part number) makes ``wait`` idempotent: a redelivered task
that arrives again counts once. Use a fresh ``key`` per run.
"""

from __future__ import annotations

import time
import uuid

import redis

from ..errors import InvalidInput, TransientError

_SLICE = 0.25  # longest single BLPOP, so a client socket_timeout never cuts one short


class RedisBarrier:
    """``RedisBarrier(client, key, parties, timeout).wait()`` → the shared start (local epoch s)."""

    def __init__(
        self, client: redis.Redis, key: str, parties: int, timeout: float, lead: float = 0.5
    ) -> None:
        if parties < 1:
            raise InvalidInput(f"a barrier needs at least 1 party, not {parties}")
        if timeout <= 0 or lead < 0:
            raise InvalidInput(f"barrier timeout must be > 0 and lead ≥ 0 (got {timeout}, {lead})")
        self.client, self.key, self.parties = client, key, parties
        self.timeout, self.lead = timeout, lead
        self.ttl = int(timeout + lead) + 60
        self.start_server: float | None = None  # the start on Redis's clock, once released

    @property
    def keys(self) -> tuple[str, str, str]:
        return f"{self.key}:members", f"{self.key}:start", f"{self.key}:go"

    def wait(self, party: str | None = None) -> float:
        """Block until all parties arrived; the start time on this machine's clock.

        TransientError if they did not all arrive within ``timeout`` seconds; a party without
        an id then leaves the set, so its retry (with a new id) does not count twice.
        """
        try:
            return self._wait(party or uuid.uuid4().hex, leave_on_timeout=party is None)
        except redis.RedisError as exc:
            raise TransientError(f"barrier {self.key}: Redis failed: {exc}") from exc

    def _wait(self, party: str, leave_on_timeout: bool) -> float:
        members, start_key, go = self.keys
        give_up = time.monotonic() + self.timeout
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd(members, party)
        pipe.scard(members)
        pipe.expire(members, self.ttl)
        _, arrived, _ = pipe.execute()
        if arrived >= self.parties:
            self._release()
        while True:
            start = self.client.get(start_key)
            if start is not None:
                return self._local(start)
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                break
            token = self.client.blpop([go], timeout=min(remaining, _SLICE))
            if token is not None:
                return self._local(token[1])
        if leave_on_timeout:  # a stable id stays: another delivery of it may still be waiting
            self.client.srem(members, party)
        start = self.client.get(start_key)  # released while we gave up?
        if start is not None:
            return self._local(start)
        arrived = self.client.scard(members)
        raise TransientError(
            f"barrier {self.key}: {arrived} of {self.parties} parties arrived "
            f"within {self.timeout:g} s"
        )

    def _release(self) -> None:
        seconds, micros = self.client.time()
        start = repr(seconds + micros / 1e6 + self.lead)
        _, start_key, go = self.keys
        if self.client.set(start_key, start, nx=True, ex=self.ttl):  # exactly one releaser
            pipe = self.client.pipeline(transaction=True)
            pipe.rpush(go, *([start] * self.parties))
            pipe.expire(go, self.ttl)
            pipe.execute()

    def _local(self, raw: bytes | str) -> float:
        self.start_server = float(raw.decode() if isinstance(raw, bytes) else raw)
        before = time.time()
        seconds, micros = self.client.time()
        after = time.time()
        offset = seconds + micros / 1e6 - (before + after) / 2  # Redis clock minus ours
        return self.start_server - offset


__all__ = ["RedisBarrier"]
