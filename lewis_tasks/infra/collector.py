"""The collector: once per ``monitoring.metrics_interval`` slot, on the control queue (beat).

It adds what no worker can see about itself — queue depth per queue (ready across the
priority sub-lists + unacked), workers online per queue (a broker ping, as the heartbeat
does), which reporting workers went quiet (down after two intervals without a report), the
stored scans, HTTP batches and findings — and rolls the workers' reports up into one
snapshot (``lewis:metrics:snapshot``) that ``lewis monitor`` and ``lewis status`` read.
It also prunes the store, so the key count stays flat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from ..domain.histogram import LatencyHistogram
from ..domain.metrics import (
    MetricBatch,
    parse_series,
    series_key,
    stats_of_histogram,
    window_slots,
)
from .broker import WorkerPing, ping_workers, queue_depths, workers_by_queue
from .metrics_store import MetricStore

log = logging.getLogger(__name__)

RATE_WINDOW = 60.0  # seconds the per-queue rates and per-task runtimes are taken over
DOWN_AFTER_INTERVALS = 2


def collect(
    app: Celery,
    store: MetricStore,
    *,
    ping_timeout: float,
    now: float | None = None,
    pinger: Callable[[], list[WorkerPing]] | None = None,
    work: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Probe, roll up, write gauges and the snapshot, prune; returns the snapshot."""
    now = time.time() if now is None else now
    interval = store.interval
    depths = queue_depths(store.client)
    # depths first, on their own: the ping below waits out its timeout, and a queue filling
    # up should be visible at once, not a ping later
    batch = MetricBatch()
    for queue, depth in depths.items():
        _gauge(batch, "celery_queue_length", depth.ready, now, queue_name=queue)
        _gauge(batch, "lewis_queue_unacked", depth.unacked, now, queue_name=queue)
    store.write(batch, now=now)
    pings = pinger() if pinger is not None else ping_workers(app, timeout=ping_timeout)
    by_queue = workers_by_queue(pings)
    latest = store.latest()
    workers = _workers(latest, pings, now, DOWN_AFTER_INTERVALS * interval)
    batch = MetricBatch()
    for queue in depths:
        _gauge(
            batch, "celery_active_worker_count", len(by_queue.get(queue, [])), now, queue_name=queue
        )
    for hostname, info in workers.items():
        _gauge(batch, "celery_worker_up", 1.0 if info["up"] else 0.0, now, hostname=hostname)
    done = work() if work is not None else {}
    for metric, label, counts in (
        ("lewis_scans", "status", done.get("scans_by_status", {})),
        ("lewis_http_batches", "status", done.get("batches_by_status", {})),
        ("lewis_findings", "severity", done.get("findings_by_severity", {})),
    ):
        for value, n in counts.items():
            _gauge(batch, metric, n, now, **{label: value})
    store.write(batch, now=now)
    rates, tasks = _rates(store, now)
    snapshot = {
        "ts": now,
        "interval": interval,
        "queues": {
            q: {
                **d.to_dict(),
                "workers": by_queue.get(q, []),
                **rates.get(q, {"done_per_s": 0.0, "failed_per_s": 0.0}),
            }
            for q, d in depths.items()
        },
        "workers": workers,
        "tasks": tasks,
        "recent": {k: v for k, v in done.items() if k.startswith("recent_")},
    }
    store.put_snapshot(snapshot)
    store.prune(now)
    return snapshot


def _gauge(batch: MetricBatch, metric: str, value: float, now: float, **labels: str) -> None:
    batch.gauge(series_key(metric, labels), metric, float(value), now)


def _workers(
    latest: dict[str, tuple[float, float]], pings: list[WorkerPing], now: float, down_after: float
) -> dict[str, dict[str, Any]]:
    """Every worker seen reporting within the retention or answering the ping, with its
    figures; a reporter silent for ``down_after`` seconds is down even if a ping came back."""
    out: dict[str, dict[str, Any]] = {}
    for series, (value, ts) in latest.items():
        name, labels = parse_series(series)
        host = labels.get("hostname")
        if host is None or not name.startswith(("lewis_worker_", "celery_worker_tasks")):
            continue
        row = out.setdefault(host, {"up": False, "last_report": 0.0, "queues": []})
        row[name.removeprefix("lewis_worker_").removeprefix("celery_worker_")] = value
        row["last_report"] = max(row["last_report"], ts)
    pinged = {p.worker: p for p in pings}
    for host, ping in pinged.items():
        row = out.setdefault(host, {"up": False, "last_report": 0.0, "queues": []})
        row["queues"] = list(ping.queues)
        row["rtt_ms"] = round(ping.rtt_ms, 3)
    for host, row in out.items():
        reported = row["last_report"] > 0
        row["up"] = (now - row["last_report"] <= down_after) if reported else host in pinged
    return out


def _rates(
    store: MetricStore, now: float
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """Per-queue done/failed per second and per-task runtimes over the last RATE_WINDOW."""
    rows = store.slots(window_slots(now, RATE_WINDOW, store.interval))
    span = len(rows) * store.interval
    rates: dict[str, dict[str, float]] = {}
    tasks: dict[str, dict[str, Any]] = {}
    runtimes: dict[str, LatencyHistogram] = {}
    for _, counters, hists, _ in rows:
        for series, value in counters.items():
            name, labels = parse_series(series)
            key = {
                "celery_task_succeeded_total": "done_per_s",
                "celery_task_failed_total": "failed_per_s",
            }.get(name)
            if key is None:
                continue
            row = rates.setdefault(
                labels.get("queue", ""), {"done_per_s": 0.0, "failed_per_s": 0.0}
            )
            row[key] += value / span
            t = tasks.setdefault(labels.get("name", ""), {"succeeded": 0, "failed": 0})
            t["succeeded" if key == "done_per_s" else "failed"] += int(value)
        for series, hist in hists.items():
            name, labels = parse_series(series)
            if name == "celery_task_runtime":
                runtimes.setdefault(labels.get("name", ""), LatencyHistogram()).merge(hist)
    for task, hist in runtimes.items():
        s = stats_of_histogram("celery_task_runtime", RATE_WINDOW, hist)
        tasks.setdefault(task, {"succeeded": 0, "failed": 0}).update(
            runtime_p50=s.p50, runtime_p95=s.p95, runtime_max=s.max
        )
    for row in rates.values():
        for k in row:
            row[k] = round(row[k], 3)
    return rates, tasks


__all__ = ["collect", "RATE_WINDOW", "DOWN_AFTER_INTERVALS"]
