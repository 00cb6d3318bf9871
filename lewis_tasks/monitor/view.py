"""What the monitor shows, read from the metric store; the last good read when Redis is down.

One :class:`MonitorView` per server: ``/metrics`` and the dashboard's once-a-second frame
both read through it, so N browsers and a scraper cost one set of Redis reads per second.
Finished slots of the history are cached: each refresh re-reads only the last two.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..domain.alertstate import Alert, load_states
from ..domain.histogram import LatencyHistogram
from ..domain.metrics import parse_series, window_slots
from ..infra.alerting import PREFIX as ALERTS_PREFIX
from ..infra.alerting import active_alerts
from ..infra.metrics_store import MetricStore

log = logging.getLogger(__name__)

HISTORY_SECONDS = 300.0  # the dashboard's charts: the last five minutes
_SlotRow = tuple[dict[str, float], dict[str, float]]  # (counters, gauges) of one slot


@dataclass
class Reading:
    """One consistent read of the store."""

    at: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, LatencyHistogram] = field(default_factory=dict)
    gauges: dict[str, tuple[float, float]] = field(default_factory=dict)
    snapshot: dict[str, Any] = field(default_factory=dict)
    history: list[tuple[int, dict[str, float], dict[str, float]]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)  # pending, firing, nodata (issue 15)


class MonitorView:
    """Reads the store at most once per ``max_age`` seconds; remembers the last good read."""

    def __init__(self, store: MetricStore, max_age: float = 1.0) -> None:
        self.store = store
        self.max_age = max_age
        self.last = Reading()
        self.stale = True
        self.error: str | None = None
        self._slots: dict[int, _SlotRow] = {}
        self._lock = threading.Lock()

    def read(self) -> tuple[Reading, bool]:
        """``(reading, stale)``: fresh if Redis answers, else the last good one and True."""
        with self._lock:
            if self.last.at and time.time() - self.last.at < self.max_age and not self.stale:
                return self.last, False
            try:
                self.last = self._read()
                self.stale, self.error = False, None
            except Exception as exc:  # Redis down, or a bad value: show what we had
                if not self.stale:
                    log.warning("monitor: metric store unavailable (%s); serving last values", exc)
                self.stale, self.error = True, f"{type(exc).__name__}: {exc}"[:200]
            return self.last, self.stale

    def _read(self) -> Reading:
        now = time.time()
        counters, histograms = self.store.totals()
        gauges = self.store.latest()
        snapshot = self.store.snapshot() or {}
        slots = list(window_slots(now, HISTORY_SECONDS, self.store.interval))
        fresh = [s for s in slots if s not in self._slots or s >= slots[-1] - 1]
        for slot, c, _, g in self.store.slots(fresh):
            self._slots[slot] = (c, g)
        for old in [s for s in self._slots if s < slots[0]]:
            del self._slots[old]
        history = [(s, *self._slots.get(s, ({}, {}))) for s in slots]
        alerts = active_alerts(load_states(self.store.client.get(f"{ALERTS_PREFIX}:state")))
        return Reading(now, counters, histograms, gauges, snapshot, history, alerts)

    def frame(self) -> dict[str, Any]:
        """The dashboard's JSON frame: snapshot, totals, and per-slot history."""
        reading, stale = self.read()
        interval = self.store.interval
        totals: dict[str, float] = {}
        for series, value in reading.counters.items():
            name = parse_series(series)[0]
            event = name.removeprefix("celery_task_").removesuffix("_total")
            totals[event] = totals.get(event, 0.0) + value
        history: dict[str, Any] = {"t": [], "done": [], "failed": [], "depth": {}}
        for slot, counters, gauges in reading.history:
            history["t"].append(slot * interval)
            done = failed = 0.0
            for series, value in counters.items():
                name = parse_series(series)[0]
                if name == "celery_task_succeeded_total":
                    done += value
                elif name == "celery_task_failed_total":
                    failed += value
            history["done"].append(round(done / interval, 3))
            history["failed"].append(round(failed / interval, 3))
            for series, value in gauges.items():
                name, labels = parse_series(series)
                if name == "celery_queue_length":
                    history["depth"].setdefault(labels.get("queue_name", ""), {})[slot] = value
        depth = {
            q: [by_slot.get(s) for s, _, _ in reading.history]
            for q, by_slot in history["depth"].items()
        }
        history["depth"] = depth
        snap = reading.snapshot
        return {
            "ts": time.time(),
            "read_at": reading.at,
            "stale": stale,
            "error": self.error,
            "interval": interval,
            "totals": totals,
            "queues": _queues(reading),
            "workers": snap.get("workers", {}),
            "tasks": snap.get("tasks", {}),
            "recent": snap.get("recent", {}),
            "snapshot_ts": snap.get("ts"),
            "history": history,
            "alerts": [
                {
                    "rule": a.rule,
                    "labels": a.labels,
                    "state": a.state,
                    "severity": a.severity,
                    "value": _finite(a.value),
                    "since": a.fired_at or a.active_at,
                    "summary": a.annotations.get("summary", ""),
                }
                for a in reading.alerts
            ],
        }


def _finite(value: float | None) -> float | None:
    return value if value is None or abs(value) != float("inf") else None


def _queues(reading: Reading) -> dict[str, Any]:
    """The snapshot's queues with the newest depth gauges: the collector writes depths
    before it pings the workers, so they are fresher than the snapshot written after."""
    queues = {q: dict(row) for q, row in reading.snapshot.get("queues", {}).items()}
    # wanted: the last scaling decision's count (issue 16)
    fields = {
        "celery_queue_length": "ready",
        "lewis_queue_unacked": "unacked",
        "lewis_desired_workers": "desired",
    }
    for series, (value, _) in reading.gauges.items():
        name, labels = parse_series(series)
        field_name = fields.get(name)
        if field_name is not None:
            row = queues.setdefault(labels.get("queue_name", ""), {"workers": []})
            row[field_name] = int(value)
    for row in queues.values():
        row["total"] = int(row.get("ready", 0)) + int(row.get("unacked", 0))
    return queues


__all__ = ["MonitorView", "Reading", "HISTORY_SECONDS"]
