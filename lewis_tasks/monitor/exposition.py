"""Prometheus text format of the store, under celery-exporter's names where they overlap.

``celery_task_<event>_total{name,hostname,queue}``, ``celery_task_runtime`` and
``celery_task_queue_wait_time`` (histograms, seconds), ``celery_worker_up{hostname}``,
``celery_worker_tasks_active{hostname}``, ``celery_queue_length{queue_name}`` and
``celery_active_worker_count{queue_name}`` match celery-exporter, so its Grafana dashboards
and alert rules work unchanged; everything else is ``lewis_*``. ``lewis_metrics_stale`` is 1
while the store cannot be read (the values are then the last ones read).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ..domain.alertstate import Alert
from ..domain.metrics import cumulative_buckets, parse_series
from .view import MonitorView

HELP = {
    "celery_task_sent": "Tasks sent (published) by producers and workers.",
    "celery_task_received": "Tasks received by a worker.",
    "celery_task_started": "Tasks started by a worker.",
    "celery_task_succeeded": "Tasks that succeeded.",
    "celery_task_failed": "Tasks that failed.",
    "celery_task_retried": "Tasks that were retried.",
    "celery_task_rejected": "Tasks rejected by a worker.",
    "celery_task_revoked": "Tasks revoked before they ran.",
    "celery_task_runtime": "Task runtime in seconds.",
    "celery_task_queue_wait_time": "Seconds from publish to start.",
    "celery_worker_up": "1 while the worker reports (down after two silent intervals).",
    "celery_worker_tasks_active": "Tasks the worker is running now.",
    "celery_queue_length": "Messages ready in the queue (all priority sub-lists).",
    "celery_active_worker_count": "Workers consuming from the queue (broker ping).",
    "lewis_queue_unacked": "Messages delivered but not yet acknowledged, per queue.",
    "lewis_desired_workers": "Workers the last scaling decision wants for the queue.",
    "lewis_current_workers": "Workers consuming the queue when the last scaling decision was made.",
    "lewis_metrics_stale": "1 when the metric store could not be read (last values shown).",
    "lewis_metrics_snapshot_age_seconds": "Seconds since the collector's last roll-up.",
    "lewis_alerts": "LEWIS alerts by rule, state (pending, firing, nodata) and severity.",
}


def _help(name: str) -> str:
    return HELP.get(name, name.replace("_", " ") + ".")


class StoreCollector(Collector):
    """A prometheus_client collector over a :class:`MonitorView`."""

    def __init__(self, view: MonitorView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        reading, stale = self.view.read()
        families: dict[str, Metric] = {}

        def family(name: str, kind: str) -> Metric:
            if name not in families:
                families[name] = Metric(name, _help(name), kind)
            return families[name]

        for series, value in sorted(reading.counters.items()):
            name, labels = parse_series(series)
            base = name.removesuffix("_total")
            family(base, "counter").add_sample(f"{base}_total", labels, value)
        for series, hist in sorted(reading.histograms.items(), key=lambda kv: kv[0]):
            name, labels = parse_series(series)
            metric = family(name, "histogram")
            for le, count in cumulative_buckets(hist):
                le_text = "+Inf" if le == float("inf") else repr(le)
                metric.add_sample(f"{name}_bucket", {**labels, "le": le_text}, float(count))
            metric.add_sample(f"{name}_count", labels, float(hist.count))
            metric.add_sample(f"{name}_sum", labels, hist.total / 1e6)
        for series, (value, _) in sorted(reading.gauges.items()):
            name, labels = parse_series(series)
            if name in families and families[name].type != "gauge":
                continue  # a name reused with another kind would make the output invalid
            family(name, "gauge").add_sample(name, labels, value)
        family("lewis_metrics_stale", "gauge").add_sample(
            "lewis_metrics_stale", {}, 1.0 if stale else 0.0
        )
        snap_ts = reading.snapshot.get("ts")
        if snap_ts:
            family("lewis_metrics_snapshot_age_seconds", "gauge").add_sample(
                "lewis_metrics_snapshot_age_seconds", {}, max(0.0, reading.at - float(snap_ts))
            )
        _alerts(family("lewis_alerts", "gauge"), reading.alerts)
        yield from families.values()


def _alerts(metric: Metric, alerts: list[Alert]) -> None:
    """``lewis_alerts{alertname,alertstate,severity}``: how many label sets are in that state
    (Prometheus' own ``ALERTS`` series, folded to three labels)."""
    counts: dict[tuple[str, str, str], int] = {}
    for a in alerts:
        key = (a.rule, a.state, a.severity)
        counts[key] = counts.get(key, 0) + 1
    for (name, state, severity), n in sorted(counts.items()):
        metric.add_sample(
            "lewis_alerts", {"alertname": name, "alertstate": state, "severity": severity}, float(n)
        )


def render(view: MonitorView) -> bytes:
    """``/metrics``' body."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(view))
    return generate_latest(registry)


__all__ = ["StoreCollector", "render", "HELP"]
