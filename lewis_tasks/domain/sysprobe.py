"""What one worker's machine and pool look like right now (psutil), as plain data.

:func:`collect_system` reads the host (cpu, memory, swap, disk, load) and the worker's process
tree — the pool parent and its children, with RSS, CPU and descriptors each. The rules that
turn snapshots into advice, and the cluster roll-up, are in :mod:`.diagnostics`. Snapshots
travel between workers as JSON: ``to_dict()`` and ``from_dict()`` round-trip.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from ..errors import InvalidInput
from .memsites import format_bytes

_MAX_INTERVAL = 5.0  # seconds: a diagnosis must not hold a worker slot for long


@dataclass(frozen=True)
class SpaceUsage:
    """Memory, swap or a disk: how big, how full. ``free_bytes`` is *available* for memory."""

    total_bytes: int
    used_bytes: int
    free_bytes: int
    percent: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpaceUsage:
        return cls(
            int(data["total_bytes"]),
            int(data["used_bytes"]),
            int(data["free_bytes"]),
            float(data["percent"]),
        )


@dataclass(frozen=True)
class ProcessUsage:
    """One process of the pool."""

    pid: int
    role: str  # "parent" (the pool's main process) or "child"
    rss_bytes: int
    cpu_percent: float  # over the sampling interval; 100 = one core busy
    num_fds: int | None  # None where the OS does not say (Windows) or access is denied
    open_files: int | None  # regular files only, a subset of the descriptors
    num_threads: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessUsage:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SystemSnapshot:
    """One look at a worker's host and process tree."""

    taken_at: float  # epoch seconds
    hostname: str
    cpu_count: int  # logical cores
    cpu_percent: float  # all cores, 0–100
    per_core: tuple[float, ...]
    load_average: tuple[float, float, float] | None  # 1, 5, 15 minutes; None where unknown
    memory: SpaceUsage
    swap: SpaceUsage
    disk_path: str
    disk: SpaceUsage
    processes: tuple[ProcessUsage, ...]  # the pool parent first, then its children
    fd_limit: int | None  # the parent's soft RLIMIT_NOFILE

    @property
    def pool_rss_bytes(self) -> int:
        return sum(p.rss_bytes for p in self.processes)

    @property
    def children(self) -> tuple[ProcessUsage, ...]:
        return tuple(p for p in self.processes if p.role == "child")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pool_rss_bytes"] = self.pool_rss_bytes
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SystemSnapshot:
        """Rebuild a snapshot from ``to_dict()`` output (e.g. a broadcast reply's JSON)."""
        try:
            load = data["load_average"]
            return cls(
                taken_at=float(data["taken_at"]),
                hostname=str(data["hostname"]),
                cpu_count=int(data["cpu_count"]),
                cpu_percent=float(data["cpu_percent"]),
                per_core=tuple(float(c) for c in data["per_core"]),
                load_average=(float(load[0]), float(load[1]), float(load[2])) if load else None,
                memory=SpaceUsage.from_dict(data["memory"]),
                swap=SpaceUsage.from_dict(data["swap"]),
                disk_path=str(data["disk_path"]),
                disk=SpaceUsage.from_dict(data["disk"]),
                processes=tuple(ProcessUsage.from_dict(p) for p in data["processes"]),
                fd_limit=data["fd_limit"],
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidInput(f"not a system snapshot: {exc!r}") from exc

    def format_table(self) -> str:
        """The snapshot as lines for a terminal."""
        load = " / ".join(f"{x:.2f}" for x in self.load_average) if self.load_average else "n/a"
        out = [
            f"host {self.hostname}: {self.cpu_count} cores, cpu {self.cpu_percent:.0f}% "
            f"(per core {' '.join(f'{c:.0f}' for c in self.per_core)}), load {load}",
            f"memory {self.memory.percent:.0f}% of {format_bytes(self.memory.total_bytes)} "
            f"({format_bytes(self.memory.free_bytes)} available), swap {self.swap.percent:.0f}% "
            f"of {format_bytes(self.swap.total_bytes)}",
            f"disk {self.disk_path} {self.disk.percent:.0f}% of {format_bytes(self.disk.total_bytes)} "
            f"({format_bytes(self.disk.free_bytes)} free)",
            f"pool: {len(self.processes)} processes, RSS {format_bytes(self.pool_rss_bytes)}, "
            f"fd limit {self.fd_limit if self.fd_limit is not None else 'n/a'}",
            f"{'pid':>8} {'role':<7} {'rss':>10} {'cpu%':>6} {'fds':>6} {'files':>6} {'threads':>8}",
        ]
        out += [
            f"{p.pid:>8} {p.role:<7} {format_bytes(p.rss_bytes):>10} {p.cpu_percent:>6.1f} "
            f"{_opt(p.num_fds):>6} {_opt(p.open_files):>6} {p.num_threads:>8}"
            for p in self.processes
        ]
        return "\n".join(out)


def collect_system(
    *, disk_path: str = "/", pool_pid: int | None = None, interval: float = 0.2
) -> SystemSnapshot:
    """Sample the host and the process tree rooted at ``pool_pid`` (default: this process).

    CPU figures, the host's and each process's, are measured over the same ``interval`` (at
    most 5 s), so a worker gives one consistent picture of who used the CPU.
    """
    if not isinstance(interval, int | float) or not 0 < interval <= _MAX_INTERVAL:
        raise InvalidInput(f"interval must be in (0, {_MAX_INTERVAL}] seconds, got {interval!r}")
    if not os.path.isdir(disk_path):
        raise InvalidInput(f"disk_path {disk_path!r} is not a directory")
    root_pid = os.getpid() if pool_pid is None else pool_pid
    try:
        root = psutil.Process(root_pid)
    except (psutil.NoSuchProcess, ValueError) as exc:
        raise InvalidInput(f"pool_pid {root_pid!r}: no such process") from exc
    tree = [("parent", root)] + [("child", c) for c in _children(root)]
    for _, proc in tree:
        _quietly(proc.cpu_percent, None)  # first call starts each process's CPU clock
    per_core = tuple(psutil.cpu_percent(interval=interval, percpu=True))
    processes = tuple(
        usage for role, proc in tree if (usage := _process_usage(proc, role)) is not None
    )
    mem, swap, disk = psutil.virtual_memory(), psutil.swap_memory(), psutil.disk_usage(disk_path)
    return SystemSnapshot(
        taken_at=time.time(),
        hostname=socket.gethostname(),
        cpu_count=psutil.cpu_count() or 1,
        cpu_percent=round(sum(per_core) / len(per_core), 1) if per_core else 0.0,
        per_core=per_core,
        load_average=_load_average(),
        memory=SpaceUsage(mem.total, mem.total - mem.available, mem.available, mem.percent),
        swap=SpaceUsage(swap.total, swap.used, swap.free, swap.percent),
        disk_path=disk_path,
        disk=SpaceUsage(disk.total, disk.used, disk.free, disk.percent),
        processes=processes,
        fd_limit=_fd_limit(root),
    )


def _children(root: psutil.Process) -> list[psutil.Process]:
    try:
        return list(root.children(recursive=True))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _process_usage(proc: psutil.Process, role: str) -> ProcessUsage | None:
    """One process's figures; None if it exited meanwhile (a child recycled mid-sample)."""
    try:
        with proc.oneshot():
            rss = proc.memory_info().rss
            cpu = proc.cpu_percent(None)
            threads = proc.num_threads()
            fds = _quietly(proc.num_fds) if hasattr(proc, "num_fds") else None
            files = _quietly(lambda: len(proc.open_files()))
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return ProcessUsage(proc.pid, role, 0, 0.0, None, None, 0)
    return ProcessUsage(proc.pid, role, rss, round(cpu, 1), fds, files, threads)


def _quietly(call: Any, *args: Any) -> Any:
    """``call(*args)``, or None when the OS refuses to tell."""
    try:
        return call(*args)
    except (psutil.AccessDenied, psutil.ZombieProcess, psutil.NoSuchProcess, OSError):
        return None


def _load_average() -> tuple[float, float, float] | None:
    try:
        one, five, fifteen = psutil.getloadavg()
    except (AttributeError, OSError):
        return None
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def _fd_limit(proc: psutil.Process) -> int | None:
    if not hasattr(proc, "rlimit"):
        return None
    soft = _quietly(lambda: proc.rlimit(psutil.RLIMIT_NOFILE)[0])
    return None if soft is None or soft == psutil.RLIM_INFINITY else int(soft)


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


__all__ = ["ProcessUsage", "SpaceUsage", "SystemSnapshot", "collect_system"]
