"""Allocation sites of one profiled call, from tracemalloc: what it kept, and what it held at its peak.

tracemalloc knows the peak *total* but not which lines held memory at that moment, so a watcher
thread samples: each time the traced total climbs well past the last sample (x1.25 and at least
1 MiB more) it takes a snapshot. ``peak_sites`` are therefore the sites at the highest *sampled*
moment — a spike shorter than the sample interval shows in ``peak_bytes`` but not in the sites.
Sizes are net of what was already allocated when the call started.
"""

from __future__ import annotations

import fnmatch
import threading
import time
import tracemalloc
from dataclasses import asdict, dataclass
from typing import Any

_OWN_FILES = (tracemalloc.__file__, __file__, __file__.replace("memsites", "profiler"))
_MIN_STEP = 1 << 20  # bytes: smaller climbs are not worth a snapshot
for _own in _OWN_FILES:  # compile the filter patterns now, so the regex cache is not "the call's"
    fnmatch.fnmatch(_own, _own)


@dataclass(frozen=True)
class AllocationSite:
    """One source line and the memory allocated there (net of the call's start)."""

    file: str
    line: int
    size_bytes: int
    count: int  # blocks

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "location": self.location}


@dataclass(frozen=True)
class MemoryProfile:
    """tracemalloc's view of one call."""

    retained_bytes: int  # still allocated when the call returned (its result included)
    peak_bytes: int  # highest traced total during the call, above the start
    current_sites: tuple[AllocationSite, ...]  # top sites alive when the call returned
    peak_sites: tuple[AllocationSite, ...]  # top sites at the highest sampled moment
    peak_sites_at_bytes: int  # traced total (above the start) when peak_sites were taken
    sample_interval: float  # seconds between the watcher's looks

    def to_dict(self) -> dict[str, Any]:
        return {
            "retained_bytes": self.retained_bytes,
            "peak_bytes": self.peak_bytes,
            "current_sites": [s.to_dict() for s in self.current_sites],
            "peak_sites": [s.to_dict() for s in self.peak_sites],
            "peak_sites_at_bytes": self.peak_sites_at_bytes,
            "sample_interval": self.sample_interval,
        }

    def format_lines(self, width: int = 110) -> list[str]:
        """Fixed-width lines for a terminal table."""
        out = [
            f"memory: peak {format_bytes(self.peak_bytes)}, retained at return "
            f"{format_bytes(self.retained_bytes)}"
        ]
        for title, sites in (
            (
                f"top {len(self.peak_sites)} allocation sites at the sampled peak "
                f"({format_bytes(self.peak_sites_at_bytes)})",
                self.peak_sites,
            ),
            (f"top {len(self.current_sites)} allocation sites alive at return", self.current_sites),
        ):
            out += ["", title, f"{'size':>10} {'blocks':>8}  site"]
            out += [
                f"{format_bytes(s.size_bytes):>10} {s.count:>8}  {clip(s.location, width - 22)}"
                for s in sites
            ]
        return out


class MemoryWatch:
    """Starts tracemalloc (unless it already runs), samples peaks, and reports at the end."""

    def __init__(self, top_n: int, sample_interval: float) -> None:
        self._top_n, self._interval = top_n, sample_interval
        self._lock = threading.Lock()
        self._started_here = False
        self._base = 0
        self._baseline: tracemalloc.Snapshot | None = None
        self._sampled_at = 0
        self._quiet_until = 0.0
        self._peak_sites: tuple[AllocationSite, ...] = ()

    def start(self) -> None:
        self._started_here = not tracemalloc.is_tracing()
        if self._started_here:
            tracemalloc.start()
        self._baseline = _own_filtered(tracemalloc.take_snapshot())
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]

    def sample(self) -> None:
        """Take a snapshot if the traced total climbed well past the last sampled one.

        A snapshot holds the GIL for time proportional to the live allocations, so after one
        that took ``t`` seconds the next waits ``9 t``: sampling costs at most ~10 % of the run.
        """
        if self._baseline is None or time.monotonic() < self._quiet_until:
            return
        net = tracemalloc.get_traced_memory()[0] - self._base
        with self._lock:
            if net < max(self._sampled_at + _MIN_STEP, int(self._sampled_at * 1.25)):
                return
            began = time.monotonic()
            self._peak_sites = self._sites(tracemalloc.take_snapshot())
            self._sampled_at = net
            self._quiet_until = time.monotonic() + 9 * (time.monotonic() - began)

    def finish(self) -> MemoryProfile:
        """Final snapshot; stops tracemalloc if this watch started it."""
        current, peak = tracemalloc.get_traced_memory()
        try:
            current_sites = self._sites(tracemalloc.take_snapshot())
        finally:
            if self._started_here:
                tracemalloc.stop()
        retained = max(current - self._base, 0)
        with self._lock:
            peak_sites, peak_at = self._peak_sites, self._sampled_at
        if not peak_sites or retained >= peak_at:  # the end was the highest moment seen
            peak_sites, peak_at = current_sites, retained
        return MemoryProfile(
            retained_bytes=retained,
            peak_bytes=max(peak - self._base, 0),
            current_sites=current_sites,
            peak_sites=peak_sites,
            peak_sites_at_bytes=peak_at,
            sample_interval=self._interval,
        )

    def _sites(self, snapshot: tracemalloc.Snapshot) -> tuple[AllocationSite, ...]:
        assert self._baseline is not None, "start() first"
        diffs = _own_filtered(snapshot).compare_to(self._baseline, "lineno")
        grown = sorted(
            (d for d in diffs if d.size_diff > 0), key=lambda d: d.size_diff, reverse=True
        )[: self._top_n]
        return tuple(
            AllocationSite(
                file=d.traceback[0].filename,
                line=d.traceback[0].lineno,
                size_bytes=d.size_diff,
                count=max(d.count_diff, 0),
            )
            for d in grown
        )


def _own_filtered(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """Drop the profiler's and tracemalloc's own allocations: they are not the call's."""
    return snapshot.filter_traces([tracemalloc.Filter(False, f) for f in _OWN_FILES])


def format_bytes(size: float) -> str:
    """``1536`` → ``1.5 KiB``: binary units, one decimal."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def clip(text: str, width: int) -> str:
    """``text`` cut from the left to ``width`` characters, marked with an ellipsis."""
    width = max(width, 20)
    return text if len(text) <= width else "…" + text[-(width - 1) :]


__all__ = ["AllocationSite", "MemoryProfile", "MemoryWatch", "clip", "format_bytes"]
