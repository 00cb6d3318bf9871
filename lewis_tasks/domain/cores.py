"""How many cores this process may use: its CPU affinity, capped by a container's CPU quota.

Kept apart from :mod:`.sysprobe` (psutil) so settings can size defaults from it without
loading psutil into every command.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cores(cgroup: Path | None = None) -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU quota
    (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up.
    A container limited to 1.5 CPUs on a 32-core host gets 2, not 32."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    quota = cpu_quota(CGROUP if cgroup is None else cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """The CPU quota in cores, or None when there is none (or no cgroup to read)."""
    v2 = _read(cgroup / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return _ratio(quota, period)
    return _ratio(
        _read(cgroup / "cpu" / "cpu.cfs_quota_us") or "",
        _read(cgroup / "cpu" / "cpu.cfs_period_us") or "",
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ratio(quota: str, period: str) -> float | None:
    """``quota / period`` for a limited cgroup; None for ``max``, ``-1`` or unreadable text."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


__all__ = ["CGROUP", "cpu_quota", "usable_cores"]
