"""Exactly one active beat: a Celery scheduler that only fires while it holds a Redis lease.

Every ``lewis beat`` runs this scheduler. One holds the lease key (``SET NX PX``) and renews
it on each tick; the others tick as standbys, trying to take the lease, and fire nothing. If
the leader dies its lease expires after ``stack.beat_lock_timeout`` seconds and a standby takes
over on its next tick. The schedule lives in memory, built from ``beat_schedule.py``: nothing
is pickled to a shelve file (Celery's default PersistentScheduler would).

Periodic jobs run on :class:`AlignedSchedule`: they fire at wall-clock multiples of their
interval and receive ``slot = floor(fire_time / interval)``, so a job's run is keyed by its
slot. A leader change cannot fire one slot twice, and the job's own upsert by slot makes a
re-run harmless anyway.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from datetime import timedelta
from typing import Any

import redis
from celery import beat, schedules

from .config import get_settings
from .redis_client import get_redis

log = logging.getLogger(__name__)

LEADER_KEY = "lewis:beat:leader"

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class AlignedSchedule(schedules.schedule):  # type: ignore[misc, unused-ignore]
    """Due once per wall-clock slot of ``run_every`` seconds, at the slot's start."""

    def slot_of(self, when: float) -> int:
        return math.floor(when / self.seconds)

    def is_due(self, last_run_at: Any) -> schedules.schedstate:
        now = time.time()
        until_next = self.seconds - (now % self.seconds)
        last = last_run_at.timestamp() if last_run_at is not None else 0.0
        if self.slot_of(now) > self.slot_of(last):
            return schedules.schedstate(True, until_next)
        return schedules.schedstate(False, until_next)


class LeaderLease:
    """A Redis lease with an owner token: only the owner renews or releases it."""

    def __init__(self, client: redis.Redis, ttl: float, key: str = LEADER_KEY) -> None:
        self.client, self.key, self.ttl_ms = client, key, int(ttl * 1000)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire_or_renew(self) -> bool:
        """True while this process holds the lease (taking it if it is free)."""
        if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        return bool(self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.token)


def leader(client: redis.Redis) -> tuple[str | None, float]:
    """(holder token, seconds left) of the beat lease; (None, 0) when no beat leads."""
    pipe = client.pipeline(transaction=False)
    pipe.get(LEADER_KEY)
    pipe.pttl(LEADER_KEY)
    holder, pttl = pipe.execute()
    if holder is None:
        return None, 0.0
    return holder.decode(), max(0.0, pttl / 1000)


class LeaderScheduler(beat.Scheduler):  # type: ignore[misc, unused-ignore]
    """Fires periodic jobs only while holding the beat lease; otherwise waits as a standby."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = get_settings()
        self._lease = LeaderLease(get_redis(), settings.stack.beat_lock_timeout)
        self._standby_poll = max(0.5, settings.stack.beat_lock_timeout / 5)
        self._leading = False
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self.merge_inplace(self.app.conf.beat_schedule)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            leading = self._lease.acquire_or_renew()
        except redis.RedisError as exc:
            log.warning("beat lease unavailable (%s); firing nothing until Redis answers", exc)
            leading = False
        if leading != self._leading:
            self._leading = leading
            log.info("beat %s: %s", self._lease.token,
                     "took the lease, now leading" if leading else "lost the lease, standing by")
            if leading:  # jobs are due from the next slot on, never for slots already past
                for entry in self.schedule.values():
                    entry.last_run_at = self.app.now()
        if not leading:
            return self._standby_poll
        return float(min(super().tick(*args, **kwargs), self.max_interval))

    def apply_async(self, entry: beat.ScheduleEntry, producer: Any = None, advance: bool = True,
                    **kwargs: Any) -> Any:
        if isinstance(entry.schedule, AlignedSchedule):
            entry.kwargs = {**(entry.kwargs or {}), "slot": entry.schedule.slot_of(time.time())}
        return super().apply_async(entry, producer, advance, **kwargs)

    def close(self) -> None:
        try:
            if self._leading:
                self._lease.release()
        except redis.RedisError:
            pass
        super().close()

    @property
    def info(self) -> str:
        return f"    . lease: {LEADER_KEY} ({self._lease.token})"


def every(seconds: float) -> AlignedSchedule:
    return AlignedSchedule(run_every=timedelta(seconds=seconds))
