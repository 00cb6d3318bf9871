"""The running scans, counted in Redis: ``performance.max_concurrent_scans`` checked in one
round trip, before anything is enqueued, by a producer that loads no database code.

A sorted set holds every scan submitted and not yet ended, scored by when it was submitted.
:func:`claim_scan_slot` prunes the ones older than the result lifetime (they can never
complete: their results are gone, so they no longer hold a slot — the rule the database
count had), counts the rest and adds the new scan only if the cap allows, in one Lua script:
two producers cannot both take the last slot. A scan gives its slot back when it ends
(:func:`release_scan_slot`: merged, failed, cancelled, or never enqueued).
"""

from __future__ import annotations

import time

import redis

RUNNING_KEY = "lewis:scans:running"

# KEYS[1] the set; ARGV: scan id, now, oldest score still running, cap, key TTL (s)
_CLAIM = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {1, redis.call('ZCARD', KEYS[1]) - 1} end
local running = redis.call('ZCARD', KEYS[1])
if running >= tonumber(ARGV[4]) then return {0, running} end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {1, running}
"""


def claim_scan_slot(client: redis.Redis, scan_id: str, cap: int, lifetime: int) -> tuple[bool, int]:
    """Take a slot for ``scan_id`` if fewer than ``cap`` scans submitted within ``lifetime``
    seconds are still running: (taken, how many were running). Taking it twice is harmless."""
    now = time.time()
    taken, running = client.eval(
        _CLAIM, 1, RUNNING_KEY, scan_id, now, now - lifetime, cap, max(1, int(lifetime))
    )
    return bool(taken), int(running)


def release_scan_slot(client: redis.Redis, scan_id: str) -> None:
    """``scan_id`` has ended: its slot is free."""
    client.zrem(RUNNING_KEY, scan_id)


def running_scans(client: redis.Redis, lifetime: int) -> list[str]:
    """The ids of the scans holding a slot (submitted within ``lifetime`` s, not ended)."""
    raw = client.zrangebyscore(RUNNING_KEY, time.time() - lifetime, "+inf")
    return [r.decode() if isinstance(r, bytes) else str(r) for r in raw]


__all__ = ["RUNNING_KEY", "claim_scan_slot", "release_scan_slot", "running_scans"]
