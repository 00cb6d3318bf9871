"""Profile one call: where its time goes (cProfile) and where its memory goes (tracemalloc).

:func:`profile_call` runs a function once under both tools and returns a :class:`ProfileReport`:
the top functions by cumulative and by own time, the allocation sites still alive when it
returned and those alive at the sampled peak, wall and CPU seconds. A function that raises
still yields its profile, with the exception recorded.

``max_seconds`` **stops** the run: a watcher thread raises :class:`DeadlineExceeded` once inside
the profiled thread when the deadline passes (``PyThreadState_SetAsyncExc``). It lands at the
next Python bytecode, so a long blocking C call (``time.sleep``, a socket read) finishes first,
and code that catches ``BaseException`` can swallow it and run on; the worker's hard time limit
stays the backstop for both. The report of a stopped run has ``timed_out=True`` and the profile
gathered up to that point. (CPython 3.11 hangs if a pending async exception is *cleared*, so
the watcher fires at most once and a late one is drained inside this module, never left over.)
"""

from __future__ import annotations

import cProfile
import ctypes
import os
import pstats
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, TransientError
from .callables import Limits, Registry, qualified_name, require_within
from .memsites import AllocationSite, MemoryProfile, MemoryWatch, clip, format_bytes

_THIS_FILE = __file__
# Bound once at import, so the call allocates nothing inside a profiled (memory-traced) run.
_SET_ASYNC_EXC = ctypes.pythonapi.PyThreadState_SetAsyncExc
_SET_ASYNC_EXC.argtypes = (ctypes.c_ulong, ctypes.py_object)
_SET_ASYNC_EXC.restype = ctypes.c_int
_TRACING = threading.Lock()  # one memory-traced profile per process at a time
_TRACEBACK_CHARS = 16_000  # results travel as JSON through Redis: keep the tail, where it failed


class DeadlineExceeded(BaseException):
    """Raised inside a profiled call past ``max_seconds``.

    A BaseException, so the ``except Exception`` blocks common in task code do not swallow it.
    """


@dataclass(frozen=True)
class ProfileRow:
    """One function in the profile, with pstats' columns."""

    file: str
    line: int
    function: str
    ncalls: int  # all calls, recursive ones included
    primitive_calls: int  # calls not induced by recursion
    tottime: float  # seconds in the function itself
    cumtime: float  # seconds in it and everything it called
    percall_tottime: float
    percall_cumtime: float

    @property
    def location(self) -> str:
        """``file:line(function)``, or ``{built-in …}`` for C functions, as pstats prints it."""
        if self.file == "~" and self.line == 0:
            return "{" + self.function.strip("<>") + "}"
        return f"{self.file}:{self.line}({self.function})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "location": self.location}


@dataclass(frozen=True)
class ExceptionInfo:
    """What the profiled call raised."""

    type: str
    message: str
    traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> ExceptionInfo:
        text = "".join(traceback.format_exception(exc))
        return cls(
            type=qualified_name(type(exc)), message=str(exc), traceback=text[-_TRACEBACK_CHARS:]
        )


@dataclass(frozen=True)
class ProfileReport:
    """Everything one profiled call showed; ``to_dict()`` for storage, ``format_table()`` to read."""

    name: str
    started_at: float  # epoch seconds
    wall_seconds: float
    cpu_seconds: float  # whole process, so a threads pool's neighbours are included
    thread_cpu_seconds: float  # the calling thread only
    total_calls: int
    primitive_calls: int
    by_cumulative: tuple[ProfileRow, ...]
    by_tottime: tuple[ProfileRow, ...]
    memory: MemoryProfile | None
    exception: ExceptionInfo | None
    timed_out: bool
    max_seconds: float
    pstats_path: str | None

    @property
    def ok(self) -> bool:
        return self.exception is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "started_at": self.started_at,
            "ok": self.ok,
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
            "thread_cpu_seconds": self.thread_cpu_seconds,
            "total_calls": self.total_calls,
            "primitive_calls": self.primitive_calls,
            "by_cumulative": [r.to_dict() for r in self.by_cumulative],
            "by_tottime": [r.to_dict() for r in self.by_tottime],
            "memory": self.memory.to_dict() if self.memory else None,
            "exception": asdict(self.exception) if self.exception else None,
            "timed_out": self.timed_out,
            "max_seconds": self.max_seconds,
            "pstats_path": self.pstats_path,
        }

    def format_table(self, width: int = 110) -> str:
        """The report as fixed-width text for a terminal."""
        out = [
            f"profile of {self.name}: wall {self.wall_seconds:.3f} s, cpu {self.cpu_seconds:.3f} s "
            f"(this thread {self.thread_cpu_seconds:.3f} s), {self.total_calls} calls "
            f"({self.primitive_calls} primitive)"
        ]
        if self.timed_out:
            out.append(
                f"STOPPED after max_seconds={self.max_seconds}: the profile covers the run so far"
            )
        elif self.exception:
            out.append(f"RAISED {self.exception.type}: {self.exception.message}")
        for title, rows in (("cumulative", self.by_cumulative), ("own (tottime)", self.by_tottime)):
            out += [
                "",
                f"top {len(rows)} by {title} time",
                f"{'ncalls':>12} {'tottime':>9} {'percall':>9} {'cumtime':>9} {'percall':>9}  function",
            ]
            out += [
                f"{_ncalls(r):>12} {r.tottime:9.4f} {r.percall_tottime:9.6f} {r.cumtime:9.4f} "
                f"{r.percall_cumtime:9.6f}  {clip(r.location, width - 54)}"
                for r in rows
            ]
        if self.memory:
            out += ["", *self.memory.format_lines(width)]
        if self.pstats_path:
            out += [
                "",
                f"pstats file: {self.pstats_path} (open with `python -m pstats` or snakeviz)",
            ]
        return "\n".join(out)


def profile_call(
    func: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    top_n: int,
    max_seconds: float,
    trace_memory: bool = True,
    pstats_path: str | os.PathLike[str] | None = None,
    limits: Limits | None = None,
    name: str | None = None,
    sample_interval: float = 0.01,
) -> ProfileReport:
    """Run ``func(*args, **kwargs)`` once under cProfile (and tracemalloc) and report on it.

    Bounds are checked first against ``limits`` (InvalidInput naming the bound). The run is
    stopped past ``max_seconds`` (see the module doc). Exceptions raised by ``func`` are recorded
    in the report, not re-raised; ``KeyboardInterrupt`` and ``SystemExit`` still propagate.
    """
    require_within(
        "max_seconds", max_seconds, limits.max_seconds if limits else None, "profiling.max_seconds"
    )
    top_n = int(require_within("top_n", top_n, limits.top_n if limits else None, "profiling.top_n"))
    require_within("sample_interval", sample_interval, None, "")
    if not callable(func):
        raise InvalidInput(f"{func!r} is not callable")
    target = Path(pstats_path) if pstats_path is not None else None
    if target is not None and not target.parent.is_dir():
        raise InvalidInput(
            f"pstats_path {str(target)!r}: directory {str(target.parent)!r} does not exist"
        )
    kwargs = dict(kwargs or {})

    # tracemalloc is process-wide: two memory-traced profiles at once would spoil each other
    if trace_memory and not _TRACING.acquire(timeout=max_seconds):
        raise TransientError("another memory-traced profile is running in this process")
    try:
        outcome = _run(
            func, args, kwargs, max_seconds, top_n if trace_memory else 0, sample_interval
        )
    finally:
        if trace_memory:
            _TRACING.release()
    profiler, exception = outcome.profiler, outcome.exception

    stats = pstats.Stats(profiler)
    rows = [
        _row(key, value)
        for key, value in stats.stats.items()  # type: ignore[attr-defined]
        if key[0] != _THIS_FILE and "_lsprof.Profiler" not in key[2]
    ]
    written = _dump(profiler, target) if target is not None else None
    return ProfileReport(
        name=name or qualified_name(func),
        started_at=outcome.started_at,
        wall_seconds=outcome.wall,
        cpu_seconds=outcome.cpu,
        thread_cpu_seconds=outcome.thread_cpu,
        total_calls=stats.total_calls,  # type: ignore[attr-defined]
        primitive_calls=stats.prim_calls,  # type: ignore[attr-defined]
        by_cumulative=tuple(sorted(rows, key=lambda r: r.cumtime, reverse=True)[:top_n]),
        by_tottime=tuple(sorted(rows, key=lambda r: r.tottime, reverse=True)[:top_n]),
        memory=outcome.memory,
        exception=ExceptionInfo.of(exception) if exception is not None else None,
        timed_out=isinstance(exception, DeadlineExceeded),
        max_seconds=float(max_seconds),
        pstats_path=written,
    )


@dataclass
class _Outcome:
    profiler: cProfile.Profile
    exception: BaseException | None
    started_at: float
    wall: float
    cpu: float
    thread_cpu: float
    memory: MemoryProfile | None


def _run(
    func: Callable[..., Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    max_seconds: float,
    memory_top_n: int,
    sample_interval: float,
) -> _Outcome:
    """Call ``func`` once under the profilers and the deadline; ``memory_top_n=0``: no tracemalloc."""
    memory = MemoryWatch(memory_top_n, sample_interval) if memory_top_n else None
    watch = _Deadline(threading.get_ident(), memory, min(sample_interval, max_seconds))
    profiler = cProfile.Profile()
    exception: BaseException | None = None
    result: Any = None
    started_at = time.time()
    watch.start()  # before the memory baseline, so the watcher's own thread is not counted
    if memory:
        memory.start()
    t0, c0, th0 = time.perf_counter(), time.process_time(), time.thread_time()
    try:
        try:
            try:
                watch.arm(max_seconds)  # only now: the memory baseline is not the call's time
                profiler.enable()
                try:
                    result = func(*args, **kwargs)
                finally:
                    profiler.disable()
            except (DeadlineExceeded, Exception) as exc:  # recorded: the profile is the product
                exception, result = exc, None
            watch.disarm(drain=not isinstance(exception, DeadlineExceeded))
        except DeadlineExceeded:
            pass  # fired as the call ended and landed in the bookkeeping above: the outcome stands
    except BaseException:  # KeyboardInterrupt, SystemExit: leave tracemalloc as it was found
        if memory:
            memory.finish()
        raise
    finally:
        watch.disarm(drain=False)
    wall, cpu, thread_cpu = (
        time.perf_counter() - t0,
        time.process_time() - c0,
        time.thread_time() - th0,
    )
    memory_profile = memory.finish() if memory else None
    del result  # kept alive until the memory snapshot above, so it counts as retained
    return _Outcome(profiler, exception, started_at, wall, cpu, thread_cpu, memory_profile)


class _Deadline(threading.Thread):
    """Watcher thread: raises DeadlineExceeded once in the profiled thread; samples memory peaks."""

    def __init__(self, target_tid: int, memory: MemoryWatch | None, interval: float) -> None:
        super().__init__(name="lewis-profile-watch", daemon=True)
        self._tid, self._memory, self._interval = target_tid, memory, interval
        self._deadline: float | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._armed = True
        self._fired = False

    def run(self) -> None:
        while not self._done.wait(self._interval):
            if self._memory:
                self._memory.sample()
            deadline = self._deadline
            if not self._fired and deadline is not None and time.monotonic() >= deadline:
                with self._lock:
                    if self._armed:
                        _set_async_exc(self._tid, DeadlineExceeded)
                        self._fired = True

    def arm(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds

    def disarm(self, *, drain: bool) -> None:
        """Stop firing and the thread; with ``drain``, let an undelivered DeadlineExceeded land here.

        Run Python bytecode for a moment so a pending exception is raised now, in the caller's
        ``except``, and not later in unrelated code. Idempotent.
        """
        with self._lock:
            self._armed = False
            fired = self._fired
        self._done.set()
        if self.is_alive():
            self.join()
        if fired and drain:
            until = time.monotonic() + 0.05
            while time.monotonic() < until:  # the backward jump checks for the pending exception
                pass


def _set_async_exc(tid: int, exc: type[BaseException]) -> None:
    """Ask CPython to raise ``exc`` in thread ``tid`` at its next bytecode (never with NULL: see top)."""
    _SET_ASYNC_EXC(tid, exc)


def _row(key: tuple[str, int, str], value: tuple[Any, ...]) -> ProfileRow:
    primitive, ncalls, tottime, cumtime = value[:4]
    return ProfileRow(
        file=key[0],
        line=key[1],
        function=key[2],
        ncalls=ncalls,
        primitive_calls=primitive,
        tottime=tottime,
        cumtime=cumtime,
        percall_tottime=tottime / ncalls if ncalls else 0.0,
        percall_cumtime=cumtime / primitive if primitive else 0.0,
    )


def _dump(profiler: cProfile.Profile, target: Path) -> str:
    """Write the marshal-format stats file pstats and snakeviz read; atomically."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    profiler.dump_stats(str(partial))
    os.replace(partial, target)
    return str(target)


def _ncalls(row: ProfileRow) -> str:
    if row.ncalls == row.primitive_calls:
        return str(row.ncalls)
    return f"{row.ncalls}/{row.primitive_calls}"


__all__ = [
    "AllocationSite",
    "DeadlineExceeded",
    "ExceptionInfo",
    "Limits",
    "MemoryProfile",
    "ProfileReport",
    "ProfileRow",
    "Registry",
    "format_bytes",
    "profile_call",
]
