"""Wake coroutines at exact ``time.perf_counter()`` instants: the open loop's send schedule.

An event loop's timers are only millisecond-exact: asyncio rounds epoll's timeout up to the
next millisecond and uvloop keeps time in whole milliseconds. At thousands of sends a second
the gaps between sends are tenths of a millisecond, so ``asyncio.sleep`` sends most requests
late, and an open loop (latency timed from the intended send) charges that lateness to the
server. On Linux a ``timerfd`` armed at the exact instant wakes the loop like any readable
socket; elsewhere the pacer falls back to ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import heapq
import itertools
import math
import os
import sys
import time
from typing import Any

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> Any:
    """libc's timerfd calls, or None where there are none (or perf_counter is another clock)."""
    if not sys.platform.startswith("linux"):
        return None
    if "CLOCK_MONOTONIC" not in time.get_clock_info("perf_counter").implementation:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        ]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


class Pacer:
    """``await pacer.until(t)`` returns at ``t`` (perf_counter seconds), to the microsecond
    where the kernel allows. Create it on the loop that uses it; :meth:`close` when done."""

    def __init__(self, *, precise: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []  # a heap
        self._order = itertools.count()  # ties go first come, first served
        self._fd = -1
        self._armed = math.inf  # the instant the timer is set for
        self._spec = _Itimerspec()
        if precise and _LIBC is not None:
            fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                self._loop.add_reader(fd, self._fire)

    @property
    def precise(self) -> bool:
        """Whether wake-ups come from a timerfd (else asyncio.sleep's millisecond timers)."""
        return self._fd >= 0

    async def until(self, when: float) -> None:
        """Return at ``when``; at once if it has passed."""
        if when <= time.perf_counter():
            return
        if self._fd < 0:
            await asyncio.sleep(when - time.perf_counter())
            return
        future = self._loop.create_future()
        heapq.heappush(self._waiting, (when, next(self._order), future))
        if when < self._armed:
            self._arm(when)
        await future

    def _arm(self, when: float) -> None:
        self._armed = when
        seconds = int(when)
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = seconds, max(1, int((when - seconds) * 1e9))
        if _LIBC.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None):
            # never seen; should the kernel refuse, the loop's own timer still wakes the waiter
            self._loop.call_later(max(0.0, when - time.perf_counter()), self._fire)

    def _fire(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the expiry count; reading clears readiness
            os.read(self._fd, 8)
        self._armed = math.inf
        now = time.perf_counter()
        waiting = self._waiting
        while waiting and waiting[0][0] <= now:
            future = heapq.heappop(waiting)[2]
            if not future.done():  # a cancelled waiter is skipped
                future.set_result(None)
        if waiting:
            self._arm(waiting[0][0])

    def close(self) -> None:
        """Stop the timer; waiters still queued are cancelled (nobody goes on after the run)."""
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        while self._waiting:
            self._waiting.pop()[2].cancel()


__all__ = ["Pacer"]
