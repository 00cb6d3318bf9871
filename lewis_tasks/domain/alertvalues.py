"""A rule's value per label set, from the metric store's slots (pure; the engine reads them).

A :class:`Frame` indexes the slots of one tick once — every series parsed one time — so a
hundred rules over the same hour cost one read and one parse. Per kind:

* **gauge** — the value per slot (the largest of the matching series in a label set, as
  ``MetricStore.stats`` does); ``last`` is the newest, and is stale (no data) when older than
  :data:`STALE_SLOTS` slots; the others aggregate the slots' values.
* **counter** — the increase per slot (absent = 0): ``count`` is the increase over the
  window, ``rate`` per second, ``avg``/``max``/``min``/``p95`` of the per-slot increases.
* **histogram** — the merged observations: ``count``, ``rate`` (per second), and ``avg``,
  ``max``, ``min``, ``p95``, ``last`` (= p95) in seconds; no observations = no data.

A denominator (a ratio such as a failure rate) is the same aggregation of the sum of its
metrics; 0/0 is 0 (nothing ran, nothing failed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .alerts import Condition, Rule
from .alertstate import Evaluation
from .histogram import bucket_bounds
from .metrics import COUNTER, GAUGE, HISTOGRAM, parse_series, slot_of, window_slots

STALE_SLOTS = 2  # a gauge not written for this many slots is stale
BLOCK_SLOTS = 12  # slots whose histograms are merged once, as one block, when stable
Row = tuple[int, Mapping[str, float], Mapping[str, Any], Mapping[str, float]]
Point = tuple[str, dict[str, str], Any]  # (metric, labels, float or SparseHist)
Group = tuple[tuple[str, str], ...]


class SparseHist:
    """A histogram of one slot as its non-empty buckets: merging a few buckets instead of
    LatencyHistogram's full bucket list is what keeps an hour of slots cheap to evaluate.
    Percentiles are LatencyHistogram's, bucket for bucket."""

    __slots__ = ("buckets", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = self.total = self.min = self.max = 0

    @classmethod
    def of(cls, value: Any) -> SparseHist:
        if isinstance(value, SparseHist):
            return value
        out = cls()
        out.buckets = {i: n for i, n in enumerate(value.counts) if n}
        out.count, out.total, out.min, out.max = value.count, value.total, value.min, value.max
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> SparseHist:
        """From the store's hash suffixes (a bucket index, ``#count``, ``#total``, …)."""
        out = cls()
        for suffix, raw in fields.items():
            value = int(float(raw))
            if suffix[0] == "#":
                setattr(out, suffix[1:], value)
            else:
                out.buckets[int(suffix)] = out.buckets.get(int(suffix), 0) + value
        return out

    def merge(self, other: SparseHist) -> None:
        if not other.count:
            return
        buckets = self.buckets
        for i, n in other.buckets.items():
            buckets[i] = buckets.get(i, 0) + n
        self.min = other.min if not self.count else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def percentile(self, p: float) -> int:
        if not self.count:
            return 0
        rank = max(1, math.ceil(p / 100 * self.count))
        if rank == 1 or rank == self.count:
            return self.min if rank == 1 else self.max
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                low, high = bucket_bounds(index)
                return min(max((low + high) // 2, self.min), self.max)
        return self.max


class SlotData:
    """One slot's points by metric, and its per-label-set roll-ups (memoised: a finished
    slot is grouped once for every tick and rule that reads it)."""

    __slots__ = ("by_metric", "groups")

    def __init__(self, points: Iterable[Point] = ()) -> None:
        self.by_metric: dict[str, list[tuple[dict[str, str], Any]]] = {}
        for name, labels, value in points:
            self.by_metric.setdefault(name, []).append((labels, value))
        self.groups: dict[tuple[Any, ...], dict[Group, Any]] = {}

    def grouped(
        self, metric: str, kind: str, by: tuple[str, ...], match: tuple[tuple[str, str], ...]
    ) -> dict[Group, Any]:
        """Per label set of ``by``: the gauge's max, the counter's sum, the merged histogram."""
        key = (metric, kind, by, match)
        out = self.groups.get(key)
        if out is not None:
            return out
        out = {}
        for labels, v in self.by_metric.get(metric, ()):
            if match and any(labels.get(k) != want for k, want in match):
                continue
            g = tuple((k, labels.get(k, "")) for k in by)
            have = out.get(g)
            if kind == HISTOGRAM:
                if have is None:
                    have = out[g] = SparseHist()
                have.merge(v)
            elif have is None:
                out[g] = v
            else:
                out[g] = have + v if kind == COUNTER else max(have, v)
        self.groups[key] = out
        return out


def parse_slot(
    counters: Mapping[str, float],
    hists: Mapping[str, Any],
    gauges: Mapping[str, float],
    parsed: dict[str, tuple[str, dict[str, str]]] | None = None,
) -> SlotData:
    """One slot's series as points; ``parsed`` remembers series names across calls."""
    parsed = {} if parsed is None else parsed
    out: list[Point] = []
    for source, wrap in ((counters, float), (hists, SparseHist.of), (gauges, float)):
        for series, value in source.items():
            if series not in parsed:
                parsed[series] = parse_series(series)
            name, labels = parsed[series]
            out.append((name, labels, wrap(value)))
    return SlotData(out)


class Frame:
    """The slots of one tick; window roll-ups memoised for the tick, shared by every rule
    with the same metric, selection and window."""

    def __init__(
        self,
        slots: Mapping[int, SlotData],
        kinds: Mapping[str, str],
        interval: float,
        now: float,
        blocks: dict[tuple[Any, ...], Any] | None = None,
        stable_before: int | None = None,
    ) -> None:
        self.slots = slots
        self.kinds = dict(kinds)
        self.interval = interval
        self.now = now
        self._windows: dict[tuple[Any, ...], dict[Group, Any]] = {}
        # histograms merged per BLOCK_SLOTS-slot block of slots that no longer change (before
        # ``stable_before``), kept by the caller between ticks: an hour-long window merges
        # ~30 blocks and the edges instead of 360 slots
        self.blocks = blocks if blocks is not None else {}
        self.stable_before = stable_before if stable_before is not None else -1

    @classmethod
    def from_rows(
        cls, rows: Iterable[Row], kinds: Mapping[str, str], interval: float, now: float
    ) -> Frame:
        """From ``MetricStore.slots()`` rows (tests, one-off evaluations)."""
        parsed: dict[str, tuple[str, dict[str, str]]] = {}
        return cls(
            {slot: parse_slot(c, h, g, parsed) for slot, c, h, g in rows}, kinds, interval, now
        )

    def evaluate(self, rule: Rule) -> Evaluation:
        """The rule's value per label set, where its conditions all hold, and no-data."""
        values = self.values(rule.condition, rule.by)
        if values is None or (not values and self.kinds.get(rule.condition.metric) != COUNTER):
            return Evaluation({}, frozenset(), nodata=rule.no_data == "nodata")
        active = {g for g, v in values.items() if rule.condition.holds(v)}
        for extra in rule.also:
            more = self.values(extra, rule.by) or {}
            active = {g for g in active if g in more and extra.holds(more[g])}
        return Evaluation(values, frozenset(active))

    def values(self, c: Condition, by: tuple[str, ...]) -> dict[Group, float] | None:
        """Label set → value; None when the metric is unknown to the store."""
        top = self._aggregate(c, c.metric, by)
        if top is None:
            return None
        if not c.denominator:
            return top
        below: dict[Group, float] = {}
        for metric in c.denominator:
            for g, v in (self._aggregate(c, metric, by) or {}).items():
                below[g] = below.get(g, 0.0) + v
        return {g: _ratio(top.get(g, 0.0), below.get(g, 0.0)) for g in set(top) | set(below)}

    def _window(
        self,
        metric: str,
        kind: str,
        by: tuple[str, ...],
        match: tuple[tuple[str, str], ...],
        slots: range,
    ) -> dict[Group, Any]:
        """Per label set over the window: the merged histogram, or slot → value."""
        key = (metric, by, match, slots.start, slots.stop)
        out = self._windows.get(key)
        if out is not None:
            return out
        out = {}
        if kind == HISTOGRAM:
            for part in self._hist_parts(metric, by, match, slots):
                for g, v in part.items():
                    acc = out.get(g)
                    if acc is None:
                        acc = out[g] = SparseHist()
                    acc.merge(v)
        else:
            for s in slots:
                data = self.slots.get(s)
                if data is not None:
                    for g, v in data.grouped(metric, kind, by, match).items():
                        out.setdefault(g, {})[s] = v
        self._windows[key] = out
        return out

    def _hist_parts(
        self, metric: str, by: tuple[str, ...], match: tuple[tuple[str, str], ...], slots: range
    ) -> Iterator[dict[Group, SparseHist]]:
        """The window's per-slot roll-ups, whole stable blocks taken pre-merged."""
        s = slots.start
        while s < slots.stop:
            block = s // BLOCK_SLOTS
            start, stop = block * BLOCK_SLOTS, (block + 1) * BLOCK_SLOTS
            if start == s and stop <= slots.stop and stop <= self.stable_before:
                yield self._block(metric, by, match, block)
                s = stop
                continue
            data = self.slots.get(s)
            if data is not None:
                yield data.grouped(metric, HISTOGRAM, by, match)
            s += 1

    def _block(
        self, metric: str, by: tuple[str, ...], match: tuple[tuple[str, str], ...], block: int
    ) -> dict[Group, SparseHist]:
        key = (block, metric, by, match)
        merged = self.blocks.get(key)
        if merged is None:
            merged = {}
            for s in range(block * BLOCK_SLOTS, (block + 1) * BLOCK_SLOTS):
                data = self.slots.get(s)
                if data is None:
                    continue
                for g, v in data.grouped(metric, HISTOGRAM, by, match).items():
                    acc = merged.get(g)
                    if acc is None:
                        acc = merged[g] = SparseHist()
                    acc.merge(v)
            self.blocks[key] = merged
        return merged

    def _aggregate(
        self, c: Condition, metric: str, by: tuple[str, ...]
    ) -> dict[Group, float] | None:
        kind = self.kinds.get(metric)
        if kind is None:
            return None
        slots = window_slots(self.now, c.window, self.interval)
        groups = self._window(metric, kind, by, c.match, slots)
        if kind == COUNTER and not by and not groups:
            groups = {(): {}}  # a known counter that did not move: 0, not "no data"
        current = slot_of(self.now, self.interval)
        out: dict[Group, float] = {}
        for g, inside in groups.items():
            if kind == HISTOGRAM:
                value = _of_histogram(c, inside)
            elif kind == COUNTER:
                value = _of_counter(c, inside, slots)
            elif kind == GAUGE:
                value = _of_gauge(c, inside, current, self.interval)
            else:
                value = None
            if value is not None:
                out[g] = value
        return out


def _ratio(top: float, below: float) -> float:
    if below == 0:
        return 0.0 if top == 0 else math.inf
    return top / below


def _pick(agg: str, samples: list[float]) -> float:
    ordered = sorted(samples)
    if agg == "avg":
        return sum(ordered) / len(ordered)
    if agg == "max":
        return ordered[-1]
    if agg == "min":
        return ordered[0]
    if agg == "p95":
        return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]
    raise ValueError(agg)  # pragma: no cover - the parser admits only known names


def _of_gauge(
    c: Condition, per_slot: Mapping[int, float], current: int, interval: float
) -> float | None:
    if not per_slot:
        return None
    if c.aggregation == "last":
        newest = max(per_slot)
        return per_slot[newest] if current - newest <= STALE_SLOTS else None
    if c.aggregation == "count":
        return float(len(per_slot))
    if c.aggregation == "rate":
        first, last = min(per_slot), max(per_slot)
        if first == last:
            return None
        return (per_slot[last] - per_slot[first]) / ((last - first) * interval)
    return _pick(c.aggregation, list(per_slot.values()))


def _of_counter(c: Condition, per_slot: Mapping[int, float], slots: range) -> float:
    total = float(sum(per_slot.values()))
    if c.aggregation == "count":
        return total
    if c.aggregation == "rate":
        return total / c.window
    if c.aggregation == "last":
        return float(per_slot.get(slots[-1], 0.0))
    return _pick(c.aggregation, [float(per_slot.get(s, 0.0)) for s in slots])


def _of_histogram(c: Condition, merged: SparseHist) -> float | None:
    if c.aggregation == "count":
        return float(merged.count)
    if c.aggregation == "rate":
        return merged.count / c.window
    if not merged.count:
        return None
    us = 1e6
    if c.aggregation == "avg":
        return merged.total / merged.count / us
    if c.aggregation == "max":
        return merged.max / us
    if c.aggregation == "min":
        return merged.min / us
    return merged.percentile(95) / us


__all__ = ["Frame", "SlotData", "SparseHist", "parse_slot", "STALE_SLOTS", "Point"]
