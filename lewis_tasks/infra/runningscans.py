"""The running scans, counted in Redis: ``performance.max_concurrent_scans`` checked in one
round trip, before anything is enqueued, by a producer that loads no database code.

A sorted set holds every scan submitted and not yet ended, scored by when it was submitted.
:func:`claim_scan_slot` prunes the ones older than the result lifetime (they can never
complete: their results are gone, so they no longer hold a slot — the rule the database
count had), counts the rest and adds the new scan only if the cap allows, in one Lua script:
two producers cannot both take the last slot. A scan gives its slot back when it ends
(:func:`release_scan_slot`: merged, failed, cancelled, or never enqueued).

A scan of many chunks sent without the database (``lewis scan`` from the shell) leaves its
plan here too (:func:`save_plan`): the first of its chunks a worker takes records the scan
from it (``lewis_tasks.tasks.scan``), and marks it recorded so the others need not read it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

RUNNING_KEY = "lewis:scans:running"
PLAN_KEY = "lewis:scan:{scan_id}:plan"  # hash: record (JSON), chunks (count), recorded ("1")

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


# never creates the hash: a plan dropped (the scan ended) must not come back without a TTL
_MARK_RECORDED = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'recorded', '1') end
return 0
"""


def save_plan(
    client: redis.Redis, scan_id: str, record: dict[str, Any], chunks: int, lifetime: int
) -> None:
    """Keep the scan's ``record`` (what the producer would have written: request, planned
    chunks, ports_total, created_at) for ``lifetime`` seconds, for its chunks to record."""
    key = PLAN_KEY.format(scan_id=scan_id)
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, mapping={"record": json.dumps(record), "chunks": chunks})
    pipe.expire(key, max(1, int(lifetime)))
    pipe.execute()


def plan_to_record(client: redis.Redis, scan_id: str) -> dict[str, Any] | None:
    """The plan's record while no chunk has marked it recorded (None once one has, or if
    there is no plan): a second reader records it again, harmlessly (upserts)."""
    key = PLAN_KEY.format(scan_id=scan_id)
    if client.hget(key, "recorded") is not None:
        return None
    raw = client.hget(key, "record")
    return json.loads(raw) if raw is not None else None


def mark_plan_recorded(client: redis.Redis, scan_id: str) -> None:
    """The scan's row is committed: its other chunks skip the plan (no-op without one)."""
    client.eval(_MARK_RECORDED, 1, PLAN_KEY.format(scan_id=scan_id))


def planned_chunks(client: redis.Redis, scan_id: str) -> int | None:
    """How many chunks a scan not recorded yet was planned with (None: no plan)."""
    raw = client.hget(PLAN_KEY.format(scan_id=scan_id), "chunks")
    return int(raw) if raw is not None else None


def drop_plan(client: redis.Redis, scan_id: str) -> None:
    """The scan has ended (or was never sent): its plan is not needed."""
    client.delete(PLAN_KEY.format(scan_id=scan_id))


__all__ = [
    "RUNNING_KEY",
    "PLAN_KEY",
    "claim_scan_slot",
    "release_scan_slot",
    "running_scans",
    "save_plan",
    "plan_to_record",
    "mark_plan_recorded",
    "planned_chunks",
    "drop_plan",
]
