"""What a scanning process keeps (chunk sizing lives in :mod:`lewis_tasks.infra.planning`).

The per-process resources of the chunk task: a thread pool the connect loops run in (sized to the io pool's slots, so a
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

from ..infra.config import get_settings
from ..infra.planning import io_slots

log = logging.getLogger(__name__)

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



__all__ = ["process_state", "raise_fd_limit", "running_chunk"]
