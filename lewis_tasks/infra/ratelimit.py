"""Connections-per-second limits that hold across every worker: a Redis token bucket.

``--rate N`` (nmap's ``--max-rate``) means N connects per second to one target host in total,
however many io workers on however many machines share the scan. Each host has one bucket in
Redis (a hash: tokens, last refill time), refilled at ``rate`` per second up to ``burst`` and
taken from by one Lua script, so a refill-and-take is atomic and uses Redis' own clock (workers'
clocks may disagree). An idle bucket expires once it would be full again anyway.

:meth:`RedisTokenBucket.for_host` gives the object the scanner's ``limiter`` parameter wants
(``acquire(n) -> (granted, wait)``, see :mod:`lewis_tasks.domain.portscan`).
"""

from __future__ import annotations

import math

import redis

from ..errors import InvalidInput, TransientError

# KEYS[1] bucket; ARGV: rate (tokens/s), burst, tokens wanted. Returns {granted, wait seconds}.
# The wait is until min(wanted - granted, burst) more tokens are in: a bucket never holds more.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local granted = math.min(wanted, math.floor(tokens))
tokens = tokens - granted
local wait = 0
if granted < wanted then
  wait = (math.min(wanted - granted, burst) - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {granted, tostring(wait)}
"""


class RedisTokenBucket:
    """Per-host token buckets in Redis: ``rate`` tokens per second, at most ``burst`` saved."""

    def __init__(
        self,
        client: redis.Redis,
        rate: float,
        burst: int | None = None,
        *,
        prefix: str = "lewis:ratelimit:connect",
    ) -> None:
        if rate <= 0:
            raise InvalidInput(f"rate {rate}: connections per second must be above 0")
        # Default burst: a tenth of a second's worth, so workers re-ask ~10 times a second
        # and the rate stays smooth; never below one token.
        self.burst = burst if burst is not None else max(1, math.ceil(rate / 10))
        if self.burst < 1:
            raise InvalidInput(f"burst {burst}: must be at least 1")
        self.client, self.rate, self.prefix = client, float(rate), prefix
        self._take = client.register_script(_TAKE)

    def key(self, host: str) -> str:
        return f"{self.prefix}:{host}"

    def acquire(self, host: str, n: int) -> tuple[int, float]:
        """Take up to ``n`` tokens of ``host``'s bucket: (granted now, seconds until the rest)."""
        if n <= 0:
            return 0, 0.0
        try:
            granted, wait = self._take(
                keys=[self.key(host)], args=[repr(self.rate), self.burst, int(n)]
            )
        except redis.RedisError as exc:
            # Fail closed: a scan that cannot see the shared budget must not exceed it.
            raise TransientError(f"rate limiter for {host}: Redis unavailable ({exc})") from exc
        return int(granted), max(0.0, float(wait))

    def for_host(self, host: str) -> HostLimiter:
        """The limiter one scan of ``host`` passes to ``scan_ports(limiter=...)``."""
        return HostLimiter(self, host)


class HostLimiter:
    """One host's bucket, with the ``acquire(n) -> (granted, wait)`` the scanner calls."""

    def __init__(self, bucket: RedisTokenBucket, host: str) -> None:
        self.bucket, self.host = bucket, host

    def acquire(self, n: int) -> tuple[int, float]:
        return self.bucket.acquire(self.host, n)


__all__ = ["RedisTokenBucket", "HostLimiter"]
