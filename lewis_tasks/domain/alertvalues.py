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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .alerts import Condition, Rule
from .alertstate import Evaluation, Group
from .histogram import LatencyHistogram
from .metrics import COUNTER, GAUGE, HISTOGRAM, parse_series, slot_of, window_slots

STALE_SLOTS = 2  # a gauge not written for this many slots is stale
Row = tuple[int, Mapping[str, float], Mapping[str, LatencyHistogram], Mapping[str, float]]


@dataclass
class _Point:
    slot: int
    labels: dict[str, str]
    value: float | LatencyHistogram


class Frame:
    """The slots of one tick, indexed by metric name."""

    def __init__(self, rows: Iterable[Row], kinds: Mapping[str, str], interval: float,
                 now: float) -> None:
        self.kinds = dict(kinds)
        self.interval = interval
        self.now = now
        self.points: dict[str, list[_Point]] = {}
        parsed: dict[str, tuple[str, dict[str, str]]] = {}
        for slot, counters, hists, gauges in rows:
            for source in (counters, hists, gauges):
                for series, value in source.items():
                    if series not in parsed:
                        parsed[series] = parse_series(series)
                    name, labels = parsed[series]
                    self.points.setdefault(name, []).append(_Point(slot, labels, value))

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

    def _aggregate(self, c: Condition, metric: str, by: tuple[str, ...]) -> dict[Group, float] | None:
        kind = self.kinds.get(metric)
        if kind is None:
            return None
        slots = window_slots(self.now, c.window, self.interval)
        groups: dict[Group, list[_Point]] = {}
        match = dict(c.match)
        for p in self.points.get(metric, ()):
            if p.slot < slots.start or p.slot >= slots.stop:
                continue
            if any(p.labels.get(k) != v for k, v in match.items()):
                continue
            groups.setdefault(tuple((k, p.labels.get(k, "")) for k in by), []).append(p)
        if kind == COUNTER and not by and not groups:
            groups[()] = []  # a known counter that did not move: 0, not "no data"
        out: dict[Group, float] = {}
        for g, points in groups.items():
            if kind == HISTOGRAM:
                value = _of_histogram(c, points)
            elif kind == COUNTER:
                value = _of_counter(c, points, slots)
            elif kind == GAUGE:
                value = _of_gauge(c, points, slot_of(self.now, self.interval), self.interval)
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


def _of_gauge(c: Condition, points: list[_Point], current: int,
              interval: float) -> float | None:
    per_slot: dict[int, float] = {}
    for p in points:
        v = float(p.value)  # type: ignore[arg-type]
        per_slot[p.slot] = max(v, per_slot.get(p.slot, v))
    if not per_slot:
        return None
    ordered = [per_slot[s] for s in sorted(per_slot)]
    if c.aggregation == "last":
        newest = max(per_slot)
        return per_slot[newest] if current - newest <= STALE_SLOTS else None
    if c.aggregation == "count":
        return float(len(ordered))
    if c.aggregation == "rate":
        first, last = min(per_slot), max(per_slot)
        if first == last:
            return None
        return (per_slot[last] - per_slot[first]) / ((last - first) * interval)
    return _pick(c.aggregation, ordered)


def _of_counter(c: Condition, points: list[_Point], slots: range) -> float:
    per_slot = dict.fromkeys(slots, 0.0)
    for p in points:
        per_slot[p.slot] += float(p.value)  # type: ignore[arg-type]
    total = sum(per_slot.values())
    if c.aggregation == "count":
        return total
    if c.aggregation == "rate":
        return total / c.window
    if c.aggregation == "last":
        return per_slot[slots[-1]]
    return _pick(c.aggregation, list(per_slot.values()))


def _of_histogram(c: Condition, points: list[_Point]) -> float | None:
    merged = LatencyHistogram.merged(p.value for p in points)  # type: ignore[misc]
    if c.aggregation == "count":
        return float(merged.count)
    if c.aggregation == "rate":
        return merged.count / c.window
    if not merged.count:
        return None
    us = 1e6
    if c.aggregation == "avg":
        return merged.mean / us
    if c.aggregation == "max":
        return merged.max / us
    if c.aggregation == "min":
        return merged.min / us
    return merged.percentile(95) / us


__all__ = ["Frame", "STALE_SLOTS"]
