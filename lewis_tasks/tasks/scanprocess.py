"""What a scanning process keeps, and how big a chunk may be.

Chunk sizing (also used by the producer when it plans a scan) and the per-process resources
of the chunk task: a thread pool the connect loops run in (sized to the io pool's slots, so a
chunk never queues behind others and eats its budget waiting), a one-thread publisher for
live progress, the count of chunks running here (they share ``scan.concurrency``), and the
soft RLIMIT_NOFILE lifted to the hard limit once.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from ..domain.scanjob import max_chunk_ports
from ..infra.config import Settings, get_settings

log = logging.getLogger(__name__)

# Shares of tasks.soft_time_limit. Chunks are sized so their worst-case port scan takes at
# most SCAN_SHARE of it; scan plus identification must end by WORK_SHARE (identification is
# cut short there); the rest is for resolving, the database and the broker.
SCAN_SHARE = 0.5
WORK_SHARE = 0.8


def io_slots(settings: Settings) -> int:
    """How many chunk tasks one io worker process may run at once."""
    w = settings.workers
    if w.io_pool == "threads":
        return max(1, w.io_concurrency or settings.performance.thread_pool_size)
    return 1  # prefork: each child is a process of its own; solo: one at a time


def chunk_ports_for(settings: Settings, rate: float | None) -> int:
    """Ports per chunk: ``scan.chunk_ports``, less if the worst case would outlive the budget.

    The worst case assumes every slot of the io process scans at once (each then gets its
    share of ``scan.concurrency``) and every port is filtered.
    """
    s = settings.scan
    share = max(1, s.concurrency // io_slots(settings))
    fits = max_chunk_ports(settings.tasks.soft_time_limit * SCAN_SHARE, concurrency=share,
                           timeout=s.timeout, retries=s.retries, rate=rate)
    return max(1, min(s.chunk_ports, fits))


# ---------------------------------------------------------------- per-process resources

_state_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None}


def process_state() -> dict[str, Any]:
    """This process's scan executor, progress publisher and running-chunk count (fork-safe)."""
    with _state_lock:
        if _state["pid"] != os.getpid():
            slots = io_slots(get_settings())
            _state.update(pid=os.getpid(), active=0, fd_raised=False,
                          executor=ThreadPoolExecutor(slots + 1, thread_name_prefix="lewis-scan"),
                          publisher=ThreadPoolExecutor(1, thread_name_prefix="lewis-progress"))
        return _state


def raise_fd_limit() -> tuple[int, int]:
    """Lift this process's soft RLIMIT_NOFILE to the hard limit (the scanner keeps its in-flight
    connects under the free descriptors − 64, so the soft limit bounds its speed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. above fs.nr_open: keep what we have
            log.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@contextmanager
def running_chunk() -> Iterator[int]:
    """Count this chunk among the process's running ones; yields how many run now."""
    state = process_state()
    with _state_lock:
        if not state["fd_raised"]:
            raise_fd_limit()
            state["fd_raised"] = True
        state["active"] += 1
        running = state["active"]
    try:
        yield running
    finally:
        with _state_lock:
            state["active"] -= 1



__all__ = ["SCAN_SHARE", "WORK_SHARE", "io_slots", "chunk_ports_for", "process_state",
           "raise_fd_limit", "running_chunk"]
