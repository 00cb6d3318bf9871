"""Diagnose workers: advice from a system snapshot, and one roll-up for the whole cluster.

:func:`recommend` applies the guide's thresholds (cpu > 80 %, memory > 85 %, disk > 90 %) and
worker-level rules — pool children near the memory recycle limit, a queue whose wait keeps
growing, a run queue longer than the cores, descriptors near the limit, every pool slot busy —
each with a severity and a sentence an operator can act on. :func:`aggregate` turns the replies
of a broadcast into one :class:`ClusterDiagnosis`, worst worker first. Snapshots come from
:func:`collect_system` (re-exported here, it lives in :mod:`.sysprobe`).

Severity of a percentage past its threshold ``t``: *warning*, then *critical* once two thirds
of the remaining headroom (``100 - t``) is gone too — cpu 93 %, memory 95 %, disk 96.7 %.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InvalidInput
from .memsites import format_bytes
from .sysprobe import ProcessUsage, SpaceUsage, SystemSnapshot, collect_system

SEVERITIES = ("info", "warning", "critical")  # in rising order
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Recommendation:
    """One finding: what crossed which line, how bad, and what to do about it."""

    code: str  # stable key, e.g. "cpu_high", "queue_wait_growing"
    severity: str  # one of SEVERITIES
    subject: str  # what it is about: a host, a disk path, a pid, a queue
    value: float
    threshold: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recommendation:
        return cls(
            str(data["code"]),
            str(data["severity"]),
            str(data["subject"]),
            float(data["value"]),
            float(data["threshold"]),
            str(data["message"]),
        )


def recommend(
    snapshot: SystemSnapshot,
    *,
    cpu: float = 80.0,
    memory: float = 85.0,
    disk: float = 90.0,
    recycle_limit_bytes: int | None = None,
    queue_wait_trend: Mapping[str, Sequence[float]] | None = None,
    queue_wait_floor: float = 1.0,
    load_per_core: float = 1.5,
    fd_share: float = 0.8,
    recycle_share: float = 0.8,
    pool_size: int | None = None,
    pool_busy: int | None = None,
) -> list[Recommendation]:
    """Findings for one worker's snapshot, worst first; an empty list when all is well.

    ``queue_wait_trend`` maps a queue to its recent waits in seconds, oldest first.
    """
    host, out = snapshot.hostname, []
    if r := _percent(
        "cpu_high",
        host,
        snapshot.cpu_percent,
        cpu,
        f"CPU at {snapshot.cpu_percent:.0f}% on {host}: the pools here are "
        "saturated; add workers on another machine, or lower this host's "
        "cpu/io concurrency if both pools share it.",
    ):
        out.append(r)
    if r := _percent(
        "memory_high",
        host,
        snapshot.memory.percent,
        memory,
        f"Memory at {snapshot.memory.percent:.0f}% on {host} "
        f"({format_bytes(snapshot.memory.free_bytes)} available): lower the cpu "
        "pool's concurrency or its recycle limit (memory.max_heap_size), or add RAM.",
    ):
        out.append(r)
    if r := _percent(
        "disk_high",
        snapshot.disk_path,
        snapshot.disk.percent,
        disk,
        f"Disk {snapshot.disk_path} on {host} is {snapshot.disk.percent:.0f}% full "
        f"({format_bytes(snapshot.disk.free_bytes)} free): delete old results and "
        "benchmark runs, or grow the volume; Redis stops writing its AOF when it is full.",
    ):
        out.append(r)
    out += _load(snapshot, load_per_core)
    out += _descriptors(snapshot, fd_share)
    if recycle_limit_bytes:
        out += _recycle(snapshot, recycle_limit_bytes, recycle_share)
    out += queue_wait_findings(queue_wait_trend or {}, floor=queue_wait_floor)
    if pool_size and pool_busy is not None and pool_busy >= pool_size:
        out.append(
            Recommendation(
                "pool_saturated",
                "info",
                host,
                float(pool_busy),
                float(pool_size),
                f"All {pool_size} pool slots on {host} were busy when sampled; if queue waits grow "
                "too, add workers (raise the scaler's max) rather than concurrency on this host.",
            )
        )
    return sorted(out, key=lambda r: -_RANK[r.severity])


def queue_wait_findings(
    trend: Mapping[str, Sequence[float]], *, floor: float = 1.0
) -> list[Recommendation]:
    """A finding per queue whose wait grows: the least-squares line rises, and the latest wait
    is at least ``floor`` seconds and 1.5 × the line's start (so one past blip does not count).

    Needs at least 3 samples per queue; critical once the latest wait is 10 × ``floor``.
    """
    out = []
    for queue, raw in sorted(trend.items()):
        waits = [float(w) for w in raw]
        if len(waits) < 3:
            continue
        first, last = _fitted_ends(waits)
        if last <= first or waits[-1] < floor or waits[-1] < 1.5 * max(first, 0.0):
            continue
        severity = "critical" if waits[-1] >= 10 * floor else "warning"
        out.append(
            Recommendation(
                "queue_wait_growing",
                severity,
                queue,
                waits[-1],
                floor,
                f"Queue {queue!r}: wait rising from {waits[0]:.1f} s to {waits[-1]:.1f} s over "
                f"the last {len(waits)} samples; tasks arrive faster than they finish. Add workers "
                "for this queue (or raise its scaler max) and check no worker is stuck.",
            )
        )
    return out


def _fitted_ends(values: Sequence[float]) -> tuple[float, float]:
    """The least-squares line's values at the first and last sample: a trend robust to one blip."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    var = sum((i - mean_x) ** 2 for i in range(n))
    slope = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(values)) / var
    return mean_y - slope * mean_x, mean_y + slope * (n - 1 - mean_x)


def _percent(
    code: str, subject: str, value: float, threshold: float, message: str
) -> Recommendation | None:
    if value <= threshold:
        return None
    critical_at = threshold + (100.0 - threshold) * 2 / 3
    severity = "critical" if value >= critical_at else "warning"
    return Recommendation(
        code, severity, subject, value, threshold, f"{message} (threshold {threshold:g}%)"
    )


def _load(snap: SystemSnapshot, per_core: float) -> list[Recommendation]:
    if not snap.load_average:
        return []
    ratio = snap.load_average[0] / max(snap.cpu_count, 1)
    if ratio <= per_core:
        return []
    return [
        Recommendation(
            "load_high",
            "critical" if ratio >= 2 * per_core else "warning",
            snap.hostname,
            round(ratio, 2),
            per_core,
            f"Load {snap.load_average[0]:.1f} on {snap.cpu_count} cores of {snap.hostname}: "
            f"{ratio:.1f} runnable processes per core wait for CPU; run fewer worker processes "
            "here or move a pool to another machine.",
        )
    ]


def _descriptors(snap: SystemSnapshot, share: float) -> list[Recommendation]:
    if not snap.fd_limit:
        return []
    worst: ProcessUsage | None = max(
        (p for p in snap.processes if p.num_fds is not None),
        key=lambda p: p.num_fds or 0,
        default=None,
    )
    if worst is None or worst.num_fds is None or worst.num_fds < share * snap.fd_limit:
        return []
    used = worst.num_fds / snap.fd_limit
    return [
        Recommendation(
            "fds_near_limit",
            "critical" if used >= 0.95 else "warning",
            f"pid {worst.pid}",
            float(worst.num_fds),
            float(snap.fd_limit),
            f"Process {worst.pid} on {snap.hostname} holds {worst.num_fds} of {snap.fd_limit} file "
            "descriptors: raise `ulimit -n` for the workers, or lower scan/http concurrency.",
        )
    ]


def _recycle(snap: SystemSnapshot, limit: int, share: float) -> list[Recommendation]:
    near = [p for p in snap.children if p.rss_bytes >= share * limit]
    if not near:
        return []
    top = max(near, key=lambda p: p.rss_bytes)
    over = sum(p.rss_bytes >= limit for p in near)
    return [
        Recommendation(
            "recycle_limit_near",
            "critical" if over else "warning",
            f"pid {top.pid}",
            float(top.rss_bytes),
            float(limit),
            f"{len(near)} of {len(snap.children)} pool children on {snap.hostname} are near the "
            f"{format_bytes(limit)} recycle limit (largest: pid {top.pid} at "
            f"{format_bytes(top.rss_bytes)}); they are replaced after their task, costing a restart "
            "each. Profile the heavy task's memory (`lewis profile`) or raise memory.max_heap_size.",
        )
    ]


@dataclass(frozen=True)
class WorkerDiagnosis:
    """One worker's reply to a diagnose broadcast."""

    worker: str
    snapshot: SystemSnapshot
    recommendations: tuple[Recommendation, ...]
    pool_size: int | None = None
    pool_busy: int | None = None

    @property
    def severity(self) -> str:
        """The worst finding's severity, or "ok"."""
        if not self.recommendations:
            return "ok"
        return max((r.severity for r in self.recommendations), key=_RANK.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "severity": self.severity,
            "snapshot": self.snapshot.to_dict(),
            "recommendations": [r.to_dict() for r in self.recommendations],
            "pool_size": self.pool_size,
            "pool_busy": self.pool_busy,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerDiagnosis:
        try:
            return cls(
                str(data["worker"]),
                SystemSnapshot.from_dict(data["snapshot"]),
                tuple(Recommendation.from_dict(r) for r in data["recommendations"]),
                data.get("pool_size"),
                data.get("pool_busy"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"not a worker diagnosis: {exc!r}") from exc


def diagnose_worker(
    worker: str,
    snapshot: SystemSnapshot,
    *,
    pool_size: int | None = None,
    pool_busy: int | None = None,
    **thresholds: Any,
) -> WorkerDiagnosis:
    """A worker's snapshot with its findings; ``thresholds`` are :func:`recommend`'s keywords."""
    found = recommend(snapshot, pool_size=pool_size, pool_busy=pool_busy, **thresholds)
    return WorkerDiagnosis(worker, snapshot, tuple(found), pool_size, pool_busy)


@dataclass(frozen=True)
class ClusterDiagnosis:
    """All workers' diagnoses in one report: the worst first, the silent ones named."""

    taken_at: float
    workers: tuple[WorkerDiagnosis, ...]  # worst first
    missing: tuple[str, ...]  # asked, but no reply
    cluster_findings: tuple[Recommendation, ...]  # not tied to one worker (queue waits)
    totals: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "totals": self.totals,
            "missing": list(self.missing),
            "cluster_findings": [r.to_dict() for r in self.cluster_findings],
            "workers": [w.to_dict() for w in self.workers],
        }

    def format_table(self) -> str:
        """The cluster report for a terminal: totals, one row per worker, then the advice."""
        t = self.totals
        out = [
            f"cluster: {t['replied']}/{t['workers']} workers replied on {t['hosts']} hosts, "
            f"pool RSS {format_bytes(t['pool_rss_bytes'])}, findings: {t['critical']} critical, "
            f"{t['warning']} warning, {t['info']} info"
        ]
        if self.missing:
            out.append(f"NO REPLY: {', '.join(self.missing)}")
        out += [
            "",
            f"{'worker':<32} {'state':<9} {'cpu%':>5} {'mem%':>5} {'disk%':>6} "
            f"{'load1':>6} {'procs':>5} {'pool rss':>10} {'busy':>7}",
        ]
        for w in self.workers:
            s, busy = w.snapshot, (f"{w.pool_busy}/{w.pool_size}" if w.pool_size else "-")
            load = f"{s.load_average[0]:.2f}" if s.load_average else "-"
            out.append(
                f"{w.worker[:32]:<32} {w.severity:<9} {s.cpu_percent:>5.0f} "
                f"{s.memory.percent:>5.0f} {s.disk.percent:>6.0f} {load:>6} "
                f"{len(s.processes):>5} {format_bytes(s.pool_rss_bytes):>10} {busy:>7}"
            )
        findings = [(None, r) for r in self.cluster_findings] + [
            (w.worker, r) for w in self.workers for r in w.recommendations
        ]
        if findings:
            out += ["", "recommendations"]
            out += [
                f"  [{r.severity}] {who + ': ' if who else ''}{r.message}" for who, r in findings
            ]
        return "\n".join(out)


def aggregate(
    reports_by_worker: Mapping[str, WorkerDiagnosis | Mapping[str, Any] | None],
    *,
    queue_wait_trend: Mapping[str, Sequence[float]] | None = None,
    queue_wait_floor: float = 1.0,
) -> ClusterDiagnosis:
    """One report from every worker's reply (a diagnosis, its ``to_dict()``, or None: no reply)."""
    replied, missing = [], []
    for name, report in sorted(reports_by_worker.items()):
        if report is None:
            missing.append(name)
        else:
            replied.append(
                report if isinstance(report, WorkerDiagnosis) else WorkerDiagnosis.from_dict(report)
            )
    replied.sort(
        key=lambda w: (
            -_RANK.get(w.severity, -1),
            -len(w.recommendations),
            -w.snapshot.cpu_percent,
            w.worker,
        )
    )
    cluster = tuple(queue_wait_findings(queue_wait_trend or {}, floor=queue_wait_floor))
    every = [r for w in replied for r in w.recommendations] + list(cluster)
    totals: dict[str, Any] = {
        "workers": len(replied) + len(missing),
        "replied": len(replied),
        "missing": len(missing),
        "hosts": len({w.snapshot.hostname for w in replied}),
        "processes": sum(len(w.snapshot.processes) for w in replied),
        "pool_rss_bytes": sum(w.snapshot.pool_rss_bytes for w in replied),
        "pool_size": sum(w.pool_size or 0 for w in replied),
        "pool_busy": sum(w.pool_busy or 0 for w in replied),
        "max_cpu_percent": max((w.snapshot.cpu_percent for w in replied), default=None),
        "max_memory_percent": max((w.snapshot.memory.percent for w in replied), default=None),
        "max_disk_percent": max((w.snapshot.disk.percent for w in replied), default=None),
        **{sev: sum(r.severity == sev for r in every) for sev in SEVERITIES},
    }
    return ClusterDiagnosis(time.time(), tuple(replied), tuple(missing), cluster, totals)


__all__ = [
    "SEVERITIES",
    "ClusterDiagnosis",
    "ProcessUsage",
    "Recommendation",
    "SpaceUsage",
    "SystemSnapshot",
    "WorkerDiagnosis",
    "aggregate",
    "collect_system",
    "diagnose_worker",
    "queue_wait_findings",
    "recommend",
]
