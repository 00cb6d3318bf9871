"""The health of a fleet, judged from what its members last said about themselves.

Workers and beats publish short-lived presence records to the broker (infra/fleet.py); this
module only reads such records, so a probe needs nothing but one Redis round trip. Exit codes
follow the probe conventions of Docker and Kubernetes: 0 healthy, 1 degraded (it works, but
something is missing or on its way out), 2 down.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

UP = "up"
DRAINING = "draining"


class Health(enum.IntEnum):
    HEALTHY = 0
    DEGRADED = 1
    DOWN = 2


@dataclass(frozen=True)
class WorkerRecord:
    """One worker process as it last described itself."""

    name: str  # Celery node name, e.g. io-1a2b3c@host
    queues: tuple[str, ...]
    state: str = UP
    pid: int = 0
    concurrency: int = 0
    visibility_timeout: int = 0  # its broker.visibility_timeout: every host must agree
    database: str = ""  # which database it writes to (infra.fleet.database_fingerprint)

    @property
    def host(self) -> str:
        return self.name.partition("@")[2] or self.name

    @property
    def consuming(self) -> tuple[str, ...]:
        """The queues it takes new work from: none once it drains."""
        return () if self.state == DRAINING else self.queues

    def matches(self, name: str) -> bool:
        """``name`` is this node's full name or its host (every node on a machine)."""
        return name in (self.name, self.host)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerRecord:
        return cls(
            name=str(data["name"]),
            queues=tuple(str(q) for q in data.get("queues") or ()),
            state=str(data.get("state") or UP),
            pid=int(data.get("pid") or 0),
            concurrency=int(data.get("concurrency") or 0),
            visibility_timeout=int(data.get("visibility_timeout") or 0),
            database=str(data.get("database") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "queues": list(self.queues),
            "state": self.state,
            "pid": self.pid,
            "concurrency": self.concurrency,
            "visibility_timeout": self.visibility_timeout,
            "database": self.database,
        }


@dataclass(frozen=True)
class BeatView:
    """The beat lease holder (None: nobody leads now) and every beat that said it is alive."""

    leader: str | None
    beats: tuple[str, ...] = ()
    leader_silent: bool = False  # the holder stopped renewing (or never said it is alive)

    @property
    def leading(self) -> bool:
        """A live beat holds the lease (not a dead one whose lease has yet to run out)."""
        return self.leader is not None and not self.leader_silent

    @property
    def standbys(self) -> tuple[str, ...]:
        return tuple(b for b in self.beats if b != self.leader)

    @property
    def describe(self) -> str:
        standby = f"standby {', '.join(self.standbys)}" if self.standbys else "no standby"
        if self.leading:
            return f"leader {self.leader}" + (f", {standby}" if self.standbys else "")
        if self.leader:  # the holder went silent: its lease runs out, then a standby takes it
            return f"leader changing ({self.leader} silent; {standby})"
        if self.standbys:  # the lease lapsed; a standby takes it within one poll
            return f"leader changing ({standby})"
        return "NOT RUNNING"


@dataclass(frozen=True)
class Verdict:
    health: Health
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def line(self) -> str:
        word = {Health.HEALTHY: "healthy", Health.DEGRADED: "degraded", Health.DOWN: "down"}
        return word[self.health] + (": " + "; ".join(self.reasons) if self.reasons else "")


def disagreeing(workers: Iterable[WorkerRecord], visibility_timeout: int) -> list[WorkerRecord]:
    """Workers whose visibility timeout is not ``visibility_timeout`` (records that do not say
    are left out)."""
    return [
        w for w in workers if w.visibility_timeout and w.visibility_timeout != visibility_timeout
    ]


def other_databases(workers: Iterable[WorkerRecord], database: str) -> list[WorkerRecord]:
    """Workers writing to another database than ``database`` (a fingerprint; records and
    callers that do not say are left out)."""
    return [w for w in workers if w.database and database and w.database != database]


def by_queue(workers: Iterable[WorkerRecord], queues: Sequence[str]) -> dict[str, list[str]]:
    """Names of the workers taking new work from each queue."""
    out: dict[str, list[str]] = {q: [] for q in queues}
    for w in workers:
        for q in w.consuming:
            out.setdefault(q, []).append(w.name)
    return out


def cluster_health(
    workers: Sequence[WorkerRecord], beat: BeatView, queues: Sequence[str]
) -> Verdict:
    """Down without any worker consuming; degraded if a queue has none or no beat leads."""
    consuming = by_queue(workers, queues)
    if not any(consuming.values()):
        return Verdict(Health.DOWN, ("no worker consumes any queue",))
    reasons = [f"queue {q}: no worker" for q, names in consuming.items() if not names]
    draining = [w.name for w in workers if w.state == DRAINING]
    if draining:
        reasons.append(f"draining: {', '.join(draining)}")
    if not beat.leading:
        reasons.append(f"beat: {beat.describe}")
    missing = any(not names for names in consuming.values()) or not beat.leading
    return Verdict(Health.DEGRADED if missing else Health.HEALTHY, tuple(reasons))


def queue_health(workers: Sequence[WorkerRecord], queue: str) -> Verdict:
    """Healthy while a worker takes new work from ``queue``; degraded if only draining ones
    hold it; down if nobody does."""
    taking = [w.name for w in workers if queue in w.consuming]
    if taking:
        return Verdict(Health.HEALTHY, (f"queue {queue}: {len(taking)} worker(s)",))
    if any(queue in w.queues for w in workers):
        return Verdict(Health.DEGRADED, (f"queue {queue}: only draining workers",))
    return Verdict(Health.DOWN, (f"queue {queue}: no worker",))


def worker_health(workers: Sequence[WorkerRecord], name: str) -> Verdict:
    """``name`` is a node or a host: healthy if each matching worker consumes, degraded if one
    drains, down if none answered lately."""
    mine = [w for w in workers if w.matches(name)]
    if not mine:
        return Verdict(Health.DOWN, (f"worker {name}: not seen",))
    draining = [w.name for w in mine if w.state == DRAINING]
    if draining:
        return Verdict(Health.DEGRADED, (f"draining: {', '.join(draining)}",))
    return Verdict(Health.HEALTHY, tuple(f"{w.name} {'/'.join(w.queues)}" for w in mine))


def beat_health(beat: BeatView) -> Verdict:
    """Healthy while a beat leads, degraded while only standbys are there (failover), else down."""
    if beat.leading:
        return Verdict(Health.HEALTHY, (f"beat: {beat.describe}",))
    if beat.standbys or beat.leader:
        return Verdict(Health.DEGRADED, (f"beat: {beat.describe}",))
    return Verdict(Health.DOWN, ("beat: NOT RUNNING",))


__all__ = [
    "Health",
    "WorkerRecord",
    "BeatView",
    "Verdict",
    "by_queue",
    "cluster_health",
    "queue_health",
    "worker_health",
    "beat_health",
    "disagreeing",
    "UP",
    "DRAINING",
]
