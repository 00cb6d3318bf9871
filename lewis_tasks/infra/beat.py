"""Exactly one active beat: a Celery scheduler that only fires while it holds a Redis lease.

Every ``lewis beat`` runs this scheduler. One holds the lease key (``SET NX PX``) and renews
it every third of its length; the others poll as standbys, trying to take the lease, and fire
nothing. The schedule lives in memory: the app's ``beat_schedule``, which the beat's entry
(``python -m beat_schedule``) fills from the jobs in ``beat_schedule.py`` — a beat started
without it fires nothing. Nothing is pickled to a shelve file (Celery's default
PersistentScheduler would).

Periodic jobs run on :class:`AlignedSchedule`: they fire at wall-clock multiples of their
interval and receive ``slot = floor(fire_time / interval)``. Before sending, the beat claims
the slot in Redis (``SET lewis:beat:slot:<job>:<slot> NX``): a slot is sent once whatever
happens to the leaders — two beats that both believe they lead, a leader that took over
within a slot its predecessor already fired — and the job's own upsert by slot makes even a
redelivered run harmless.

Failover within one slot (:func:`lease_timing`): the lease is no longer than the shortest job
interval (and ``stack.beat_lock_timeout``), standbys poll four times per lease, and a new
leader fires the current slot at once unless it was claimed. A leader killed just before a
slot starts is replaced within 1.25 intervals, so a failover skips at most one slot of any job
(for intervals of a second or more: the lease is never shorter than 1 s).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import beat, schedules

from .config import get_settings
from .fleet import LEADER_KEY as FLEET_LEADER_KEY
from .fleet import forget_beat, leader, write_beat  # noqa: F401  (leader: moved to fleet.py, still importable here)
from .redis_client import get_redis

log = logging.getLogger(__name__)

LEADER_KEY = FLEET_LEADER_KEY  # one name, kept in fleet.py for probes without Celery
SLOT_KEY = "lewis:beat:slot:{job}:{slot}"  # who fired a job's slot; lives two intervals + 60 s
MIN_LEASE = 1.0  # seconds: shorter, a busy machine's scheduling delays would pass the lease on

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


@dataclass(frozen=True)
class LeaseTiming:
    """How long the lease lives, how often the leader renews it, how often standbys try it."""

    ttl: float
    renew_every: float
    standby_poll: float


def lease_timing(lock_timeout: float, intervals: Iterable[float]) -> LeaseTiming:
    """The lease for jobs of these ``intervals``: at most the shortest one (and ``lock_timeout``).

    A failover takes at most ttl (the dead leader's last renewal running out) + one standby
    poll = 1.25 × the shortest interval, and the new leader fires the current slot: at most
    one slot of any job is skipped. Never below :data:`MIN_LEASE`.
    """
    shortest = min((float(i) for i in intervals), default=float(lock_timeout))
    ttl = max(MIN_LEASE, min(float(lock_timeout), shortest))
    return LeaseTiming(ttl=ttl, renew_every=ttl / 3, standby_poll=ttl / 4)


class LeaderLease:
    """A Redis lease with an owner token: only the owner renews or releases it."""

    def __init__(self, client: redis.Redis, ttl: float, key: str = LEADER_KEY) -> None:
        self.client, self.key, self.ttl_ms = client, key, max(1, int(ttl * 1000))
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire_or_renew(self) -> bool:
        """True while this process holds the lease (taking it if it is free)."""
        if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        return bool(self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.token)

    def claim_slot(self, job: str, slot: int, interval: float) -> bool:
        """True if this beat is the first to fire ``job``'s ``slot`` (then it must send it)."""
        key = SLOT_KEY.format(job=job, slot=slot)
        # kept past the slot's end (+60 s for clocks of other hosts that run behind)
        return bool(self.client.set(key, self.token, nx=True, px=int((2 * interval + 60) * 1000)))

    def slot_owner(self, job: str, slot: int) -> str | None:
        owner = self.client.get(SLOT_KEY.format(job=job, slot=slot))
        return owner.decode() if isinstance(owner, bytes) else owner


class LeaderScheduler(beat.Scheduler):  # type: ignore[misc, unused-ignore]
    """Fires periodic jobs only while holding the beat lease; otherwise waits as a standby."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._leading = False
        super().__init__(*args, **kwargs)
        # from the app's jobs, not self.schedule: celery beat's banner comes from a lazy
        # scheduler whose schedule is still empty (it printed the 15 s cap, not the lease)
        jobs = (self.app.conf.beat_schedule or {}).values()
        self._timing = lease_timing(
            get_settings().stack.beat_lock_timeout,
            [j["schedule"].seconds for j in jobs if isinstance(j.get("schedule"), AlignedSchedule)],
        )
        self._lease = LeaderLease(get_redis(), self._timing.ttl)

    def setup_schedule(self) -> None:
        # handed in by the entry (beat_schedule.py): infra does not import the jobs
        self.merge_inplace(self.app.conf.beat_schedule or {})

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            leading = self._lease.acquire_or_renew()
        except redis.RedisError as exc:
            log.warning("beat lease unavailable (%s); firing nothing until Redis answers", exc)
            leading = False
        if leading != self._leading:
            self._leading = leading
            log.info(
                "beat %s: %s",
                self._lease.token,
                "took the lease, now leading" if leading else "lost the lease, standing by",
            )
            if leading:  # the current slot is due unless claimed: a takeover skips no more
                for entry in self.schedule.values():
                    entry.last_run_at = datetime.fromtimestamp(0, UTC)
                self._heap = None  # re-read every entry's due time
        self._announce("leader" if leading else "standby")
        if not leading:
            return self._timing.standby_poll
        return float(
            min(super().tick(*args, **kwargs), self.max_interval, self._timing.renew_every)
        )

    def apply_async(
        self, entry: beat.ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        if isinstance(entry.schedule, AlignedSchedule):
            slot = entry.schedule.slot_of(time.time())
            if not self._claim(entry.name, slot, entry.schedule.seconds):
                return None
            entry.kwargs = {**(entry.kwargs or {}), "slot": slot}
        return super().apply_async(entry, producer, advance, **kwargs)

    def _claim(self, job: str, slot: int, interval: float) -> bool:
        """Claim ``job``'s ``slot`` for this beat; False (send nothing) if another beat has it or
        Redis cannot say: a slot skipped is better than a slot sent twice."""
        try:
            if self._lease.claim_slot(job, slot, interval):
                log.info("beat %s: firing %s slot %d", self._lease.token, job, slot)
                return True
            owner = self._lease.slot_owner(job, slot)
        except redis.RedisError as exc:
            log.warning(
                "beat %s: cannot claim %s slot %d (%s); not firing it",
                self._lease.token,
                job,
                slot,
                exc,
            )
            return False
        log.info(
            "beat %s: %s slot %d was fired by %s; not again", self._lease.token, job, slot, owner
        )
        return False

    def _announce(self, role: str) -> None:
        """This beat's presence record (`lewis status` lists standbys, `lewis health --beat`)."""
        with contextlib.suppress(redis.RedisError):  # reported above, by the lease
            every = self._timing.renew_every if role == "leader" else self._timing.standby_poll
            write_beat(
                self._lease.client,
                self._lease.token,
                role,
                ttl=2 * self._timing.ttl + 1,
                every=every,
            )

    def close(self) -> None:
        try:
            if self._leading:
                self._lease.release()
            forget_beat(self._lease.client, self._lease.token)
        except redis.RedisError:
            pass
        super().close()

    @property
    def info(self) -> str:
        return (
            f"    . lease: {LEADER_KEY} ({self._lease.token}), {self._timing.ttl:g} s, "
            f"renewed every {self._timing.renew_every:.2f} s"
        )


def every(seconds: float) -> AlignedSchedule:
    return AlignedSchedule(run_every=timedelta(seconds=seconds))
