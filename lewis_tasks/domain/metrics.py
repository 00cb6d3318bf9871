"""Metric math: series names, time slots, batches of points, and window statistics.

A *series* is a metric name plus its labels. Points fall into *slots* of
``monitoring.metrics_interval`` seconds; a window's statistics merge the slots it covers.
Counters and histograms add exactly across processes and slots (histograms are the load
test's :class:`LatencyHistogram`, so percentiles are never averaged); a gauge keeps its
last value per slot. Nothing here talks to Redis: ``infra/metrics_store.py`` maps batches
to hash fields with :func:`histogram_fields` and back with :func:`histogram_from_fields`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from .histogram import LatencyHistogram

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
KINDS = (COUNTER, GAUGE, HISTOGRAM)
OVERFLOW_LABELS = {"overflow": "true"}  # where label sets past the cap are folded
_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_WINDOW_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_WINDOW_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
# Prometheus `le` bounds (seconds) the exact histograms are folded onto for exposition
DEFAULT_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

Labels = Mapping[str, str]


def series_key(name: str, labels: Labels | None = None) -> str:
    """A stable string for ``name`` + ``labels`` (sorted), used as a hash field."""
    if not _NAME_RE.match(name):
        raise InvalidInput(f"metric name {name!r} is not a valid Prometheus name")
    items = sorted((str(k), str(v)) for k, v in (labels or {}).items())
    return json.dumps([name, items], separators=(",", ":"))


def parse_series(key: str) -> tuple[str, dict[str, str]]:
    """``(name, labels)`` of a :func:`series_key`; InvalidInput for anything else."""
    try:
        name, items = json.loads(key)
        return str(name), {str(k): str(v) for k, v in items}
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"not a metric series: {key[:80]!r} ({exc})") from None


def overflow_key(series: str) -> str:
    """The series a label set past the cap is counted under (same name, one fixed label)."""
    return series_key(parse_series(series)[0], OVERFLOW_LABELS)


def slot_of(timestamp: float, interval: float) -> int:
    return int(timestamp // interval)


def window_slots(now: float, window: float, interval: float) -> range:
    """The slots a window of ``window`` seconds ending at ``now`` touches (current included)."""
    last = slot_of(now, interval)
    count = max(1, math.ceil(window / interval))
    return range(last - count + 1, last + 1)


def parse_window(text: str | float) -> float:
    """Seconds in ``"5m"``, ``"90s"``, ``"1h"``, ``"300"``; InvalidInput otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _WINDOW_RE.match(str(text))
        if not m:
            raise InvalidInput(f"window {text!r}: expected a duration like 90s, 5m or 1h")
        seconds = float(m.group(1)) * _WINDOW_UNITS[m.group(2)]
    if seconds <= 0:
        raise InvalidInput(f"window {text!r}: must be longer than zero")
    return seconds


@dataclass(frozen=True)
class MetricStats:
    """The guide's ``get_metric_stats`` answer over one window.

    Histograms (runtimes, waits): statistics of the observations, in seconds. Counters: of
    the increase per slot (``sum`` is the increase over the window). Gauges: of the value
    seen per slot.
    """

    name: str
    kind: str
    window: float
    count: int
    sum: float
    min: float
    max: float
    avg: float
    p50: float
    p95: float
    p99: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _nearest_rank(ordered: list[float], p: float) -> float:
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def stats_of_samples(name: str, kind: str, window: float, values: Iterable[float]) -> MetricStats:
    """Exact statistics of a list of samples (nearest-rank percentiles); zeros when empty."""
    ordered = sorted(values)
    if not ordered:
        return MetricStats(name, kind, window, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    total = float(sum(ordered))
    return MetricStats(
        name,
        kind,
        window,
        len(ordered),
        total,
        ordered[0],
        ordered[-1],
        total / len(ordered),
        _nearest_rank(ordered, 50),
        _nearest_rank(ordered, 95),
        _nearest_rank(ordered, 99),
    )


def stats_of_histogram(name: str, window: float, hist: LatencyHistogram) -> MetricStats:
    """Statistics of a merged histogram of µs observations, reported in seconds."""
    us = 1e6
    return MetricStats(
        name,
        HISTOGRAM,
        window,
        hist.count,
        hist.total / us,
        hist.min / us,
        hist.max / us,
        hist.mean / us,
        hist.percentile(50) / us,
        hist.percentile(95) / us,
        hist.percentile(99) / us,
    )


def cumulative_buckets(
    hist: LatencyHistogram, bounds: Iterable[float] = DEFAULT_BUCKETS
) -> list[tuple[float, int]]:
    """``[(le_seconds, observations ≤ le), …, (inf, count)]`` for a Prometheus histogram.

    A fine bucket counts under the first bound its upper edge fits, so a count may land one
    bound late by at most the fine bucket's width (≤ 1/64 of its value): never early.
    """
    from .histogram import bucket_bounds

    edges = sorted(bounds)
    out = [0] * len(edges)
    for index, n in enumerate(hist.counts):
        if not n:
            continue
        high_s = bucket_bounds(index)[1] / 1e6
        for i, le in enumerate(edges):
            if high_s <= le:
                out[i] += n
                break
    running, result = 0, []
    for le, n in zip(edges, out, strict=True):
        running += n
        result.append((le, running))
    result.append((math.inf, hist.count))
    return result


# --- histograms as hash fields ------------------------------------------------------------


def histogram_fields(hist: LatencyHistogram) -> list[tuple[str, str, int]]:
    """``(op, suffix, value)`` that add ``hist`` to a stored one: ``+`` adds, ``<``/``>`` keep
    the minimum/maximum. Suffixes: a bucket index, or ``#count``, ``#total``, ``#min``, ``#max``."""
    ops: list[tuple[str, str, int]] = [("+", str(i), n) for i, n in enumerate(hist.counts) if n]
    if hist.count:
        ops += [
            ("+", "#count", hist.count),
            ("+", "#total", hist.total),
            ("<", "#min", hist.min),
            (">", "#max", hist.max),
        ]
    return ops


def histogram_from_fields(fields: Mapping[str, Any]) -> LatencyHistogram:
    """The histogram stored as :func:`histogram_fields` suffixes (values may be bytes/str)."""
    hist = LatencyHistogram()
    for suffix, raw in fields.items():
        value = int(float(raw))
        if suffix == "#count":
            hist.count = value
        elif suffix == "#total":
            hist.total = value
        elif suffix == "#min":
            hist.min = value
        elif suffix == "#max":
            hist.max = value
        else:
            index = int(suffix)
            if index >= len(hist.counts):
                hist.counts.extend([0] * (index + 1 - len(hist.counts)))
            hist.counts[index] += value
    return hist


# --- a batch of points, as a reporter gathers them between writes -------------------------


@dataclass
class MetricBatch:
    """Points gathered in one process between two writes; merged back if a write fails."""

    counters: dict[tuple[int, str], float] = field(default_factory=dict)
    histograms: dict[tuple[int, str], LatencyHistogram] = field(default_factory=dict)
    gauges: dict[str, tuple[float, float]] = field(default_factory=dict)  # series → (value, ts)
    kinds: dict[str, str] = field(default_factory=dict)  # metric name → kind

    def inc(self, slot: int, series: str, name: str, value: float = 1.0) -> None:
        key = (slot, series)
        self.counters[key] = self.counters.get(key, 0.0) + value
        if name not in self.kinds:
            self.kinds[name] = COUNTER

    def observe(self, slot: int, series: str, name: str, seconds: float) -> None:
        key = (slot, series)
        hist = self.histograms.get(key)
        if hist is None:
            hist = self.histograms[key] = LatencyHistogram()
            self.kinds.setdefault(name, HISTOGRAM)
        hist.record(int(seconds * 1_000_000))

    def gauge(self, series: str, name: str, value: float, timestamp: float) -> None:
        self.gauges[series] = (float(value), timestamp)
        self.kinds.setdefault(name, GAUGE)

    def merge(self, other: MetricBatch) -> None:
        """Add ``other`` (an earlier batch whose write failed) to this one."""
        for key, value in other.counters.items():
            self.counters[key] = self.counters.get(key, 0.0) + value
        for key, hist in other.histograms.items():
            if key in self.histograms:
                self.histograms[key].merge(hist)
            else:
                self.histograms[key] = hist
        for series, point in other.gauges.items():
            if series not in self.gauges or self.gauges[series][1] < point[1]:
                self.gauges[series] = point
        for name, kind in other.kinds.items():
            self.kinds.setdefault(name, kind)

    def drop_before(self, slot: int) -> int:
        """Forget counters and histograms of slots before ``slot`` (beyond retention)."""
        old = [k for k in self.counters if k[0] < slot]
        old_h = [k for k in self.histograms if k[0] < slot]
        for k in old:
            del self.counters[k]
        for k in old_h:
            del self.histograms[k]
        return len(old) + len(old_h)

    def series(self) -> set[str]:
        return {s for _, s in self.counters} | {s for _, s in self.histograms} | set(self.gauges)

    def rename(self, mapping: Mapping[str, str]) -> None:
        """Re-key series (label sets over the cap → the overflow series), merging collisions."""
        renamed = MetricBatch(kinds=dict(self.kinds))
        for (slot, s), value in self.counters.items():
            key = (slot, mapping.get(s, s))
            renamed.counters[key] = renamed.counters.get(key, 0.0) + value
        for (slot, s), hist in self.histograms.items():
            key = (slot, mapping.get(s, s))
            if key in renamed.histograms:
                renamed.histograms[key].merge(hist)
            else:
                renamed.histograms[key] = hist
        for s, point in self.gauges.items():
            renamed.gauges[mapping.get(s, s)] = point
        self.counters, self.histograms, self.gauges = (
            renamed.counters,
            renamed.histograms,
            renamed.gauges,
        )

    def __bool__(self) -> bool:
        return bool(self.counters or self.histograms or self.gauges)


__all__ = [
    "COUNTER",
    "GAUGE",
    "HISTOGRAM",
    "KINDS",
    "DEFAULT_BUCKETS",
    "MetricBatch",
    "MetricStats",
    "series_key",
    "parse_series",
    "overflow_key",
    "slot_of",
    "window_slots",
    "parse_window",
    "stats_of_samples",
    "stats_of_histogram",
    "cumulative_buckets",
    "histogram_fields",
    "histogram_from_fields",
]
