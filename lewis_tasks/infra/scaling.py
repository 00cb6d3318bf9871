"""The scaling decision job's machinery: measured load in, decisions recorded and actuated.

Once per ``scaling.interval`` slot (beat, control queue): read each scaled queue's load and
workers from the metric store (the collector's gauges), the queue's recent recommendations
from the database (the scale-down window) and any manual override from Redis; decide
(domain/scaling.py); claim the (slot, queue) row — a second beat firing the same slot finds
it taken and does nothing more; export ``lewis_desired_workers`` and
``lewis_current_workers``; hand the decision to the actuator. An actuator failure is
recorded on the decision and retried by the next slot; nothing else stops.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import psutil
import redis
from celery import Celery

from ..domain.metrics import MetricBatch, parse_series, series_key
from ..domain.scaling import (
    QueueLoad,
    QueuePolicy,
    Recommendation,
    ScalingDecision,
    VerticalAdvice,
    advise_pool,
    decide_scale,
)
from ..errors import InvalidInput
from .actuators import Actuator, build_actuator
from .collector import DOWN_AFTER_INTERVALS
from .config import SCALED_QUEUES, Settings
from .metrics_store import MetricStore

log = logging.getLogger(__name__)

OVERRIDE_KEY = "lewis:scaling:override:{queue}"  # JSON {workers, until}, expiring with it
MAX_OVERRIDE_SECONDS = 7 * 86400


def policies(settings: Settings) -> list[QueuePolicy]:
    """Each scaled queue's policy from ``scaling.*``."""
    s = settings.scaling
    return [
        QueuePolicy(
            q,
            min_workers=getattr(s, f"{q}_min_workers"),
            max_workers=getattr(s, f"{q}_max_workers"),
            target_per_worker=getattr(s, f"{q}_target_per_worker"),
            stabilization_window=s.stabilization_window,
            activation=s.activation_threshold,
            tolerance=s.tolerance,
        )
        for q in SCALED_QUEUES
    ]


def max_age(settings: Settings) -> float:
    """Readings older than this decide nothing: two collector intervals and its ping."""
    m = settings.monitoring
    return DOWN_AFTER_INTERVALS * m.metrics_interval + m.ping_timeout + 1.0


def read_loads(
    latest: dict[str, tuple[float, float]], queues: tuple[str, ...] = SCALED_QUEUES
) -> dict[str, QueueLoad]:
    """Each queue's ready, unacked and workers from the collector's gauges (None: unmeasured)."""
    out = {}
    for q in queues:
        got = [
            latest.get(series_key(m, {"queue_name": q}))
            for m in ("celery_queue_length", "lewis_queue_unacked", "celery_active_worker_count")
        ]
        stamps = [r[1] for r in got if r is not None]
        ready, unacked, workers = (int(r[0]) if r is not None else None for r in got)
        out[q] = QueueLoad(
            q, ready, unacked, workers, min(stamps) if len(stamps) == len(got) else None
        )
    return out


def pool_advice(
    latest: dict[str, tuple[float, float]],
    workers: dict[str, tuple[str, ...]],
    cores: int,
    memory_total: float,
) -> dict[str, list[VerticalAdvice]]:
    """Vertical advice per queue for each reporting worker (cpu: % of this host's cores;
    memory: its resident set as % of this host's memory)."""
    figures: dict[str, dict[str, float]] = {}
    for series, (value, _) in latest.items():
        name, labels = parse_series(series)
        if name in ("lewis_worker_cpu_percent", "lewis_worker_rss_bytes") and "hostname" in labels:
            figures.setdefault(labels["hostname"], {})[name] = value
    out: dict[str, list[VerticalAdvice]] = {}
    for host, f in sorted(figures.items()):
        if len(f) < 2 or host not in workers:
            continue
        advice = advise_pool(
            host,
            f["lewis_worker_cpu_percent"] / max(1, cores),
            100.0 * f["lewis_worker_rss_bytes"] / max(1.0, memory_total),
        )
        for q in workers[host]:
            out.setdefault(q, []).append(advice)
    return out


# --- manual override (`lewis scale set`) -----------------------------------------------------


def set_override(client: redis.Redis, queue: str, workers: int, seconds: float) -> float:
    """Run ``workers`` for ``queue`` for ``seconds``, whatever the load; returns the end."""
    if queue not in SCALED_QUEUES:
        raise InvalidInput(f"queue {queue!r} is not scaled (scaled: {', '.join(SCALED_QUEUES)})")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InvalidInput(f"workers must be a whole number >= 0, got {workers!r}")
    if not 0 < seconds <= MAX_OVERRIDE_SECONDS:
        raise InvalidInput(
            f"an override lasts between 1 s and {MAX_OVERRIDE_SECONDS // 86400} "
            f"days, got {seconds:g}s"
        )
    until = time.time() + seconds
    client.set(
        OVERRIDE_KEY.format(queue=queue),
        json.dumps({"workers": workers, "until": until}),
        px=int(seconds * 1000),
    )
    return until


def clear_override(client: redis.Redis, queue: str) -> bool:
    return bool(client.delete(OVERRIDE_KEY.format(queue=queue)))


def read_override(client: redis.Redis, queue: str) -> dict[str, Any] | None:
    raw = client.get(OVERRIDE_KEY.format(queue=queue))
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("workers"), int) else None


# --- deciding --------------------------------------------------------------------------------

History = Callable[[str, float], list[Recommendation]]


class Ledger(Protocol):
    """Where the decision job keeps its decisions (storage/scaling.py's DecisionLedger)."""

    def history(self, queue: str, since: float) -> list[Recommendation]:
        """The queue's recommendations since ``since`` (epoch seconds): the scale-down window."""
        ...

    def claim(self, slot: int, decision: ScalingDecision, actuator: str) -> bool:
        """Record ``decision`` for ``slot``; False when that slot's was taken already."""
        ...

    def record(
        self, slot: int, queue: str, *, outcome: dict[str, Any] | None, error: str | None
    ) -> None:
        """Add the actuator's word (or its error) to the slot's decision."""
        ...


def plan(
    settings: Settings, store: MetricStore, history: History, now: float | None = None
) -> list[ScalingDecision]:
    """Every scaled queue's decision now, nothing recorded or done (``lewis scale plan``)."""
    from .fleet import read_workers

    now = time.time() if now is None else now
    latest = store.latest()
    loads = read_loads(latest)
    consuming = {w.name: w.queues for w in read_workers(store.client)}
    advice = pool_advice(
        latest, consuming, psutil.cpu_count() or 1, float(psutil.virtual_memory().total)
    )
    out = []
    for policy in policies(settings):
        override = read_override(store.client, policy.queue)
        decision = decide_scale(
            policy,
            loads[policy.queue],
            history(policy.queue, now - policy.stabilization_window),
            now,
            max_age(settings),
            override=override["workers"] if override else None,
        )
        decision.inputs["pool_advice"] = [a.to_dict() for a in advice.get(policy.queue, [])]
        if override:
            decision.inputs["override_until"] = override.get("until")
        out.append(decision)
    return out


def decide_and_act(
    app: Celery,
    settings: Settings,
    store: MetricStore,
    slot: int,
    ledger: Ledger,
    actuator: Actuator | None = None,
) -> list[dict[str, Any]]:
    """The decision job: plan, claim each (slot, queue) once in ``ledger``, export, actuate,
    record."""
    actuator = actuator or build_actuator(settings.scaling, app, store.client)
    now = time.time()
    results = []
    batch = MetricBatch()
    for decision in plan(settings, store, ledger.history, now):
        claimed = ledger.claim(slot, decision, actuator.name)
        row: dict[str, Any] = {
            "queue": decision.queue,
            "action": decision.action,
            "current": decision.current,
            "desired": decision.desired,
            "reason": decision.reason,
            "actuator": actuator.name,
        }
        if not claimed:  # another beat decided this slot: it actuates, not us
            results.append({**row, "skipped": f"slot {slot} already decided"})
            continue
        if decision.current is not None:
            _gauge(batch, "lewis_current_workers", decision.current, now, decision.queue)
        if decision.desired is not None:
            _gauge(batch, "lewis_desired_workers", decision.desired, now, decision.queue)
        outcome, error = _actuate(actuator, decision)
        ledger.record(slot, decision.queue, outcome=outcome, error=error)
        results.append({**row, "outcome": outcome, "error": error})
    try:
        store.write(batch, now=now)
    except redis.RedisError as exc:  # the decisions stand; only the gauges wait a slot
        log.warning("scaling: gauges not written: %s", exc)
    return results


def _actuate(
    actuator: Actuator, decision: ScalingDecision
) -> tuple[dict[str, Any] | None, str | None]:
    if decision.desired is None:
        return None, None
    try:
        return actuator.apply(decision), None
    except Exception as exc:  # any actuator failure: recorded, retried next slot
        log.warning(
            "scaling: %s actuator failed for %s (desired %s): %s",
            actuator.name,
            decision.queue,
            decision.desired,
            exc,
        )
        return None, f"{type(exc).__name__}: {exc}"[:1000]


def _gauge(batch: MetricBatch, metric: str, value: float, now: float, queue: str) -> None:
    batch.gauge(series_key(metric, {"queue_name": queue}), metric, float(value), now)


__all__ = [
    "policies",
    "max_age",
    "read_loads",
    "pool_advice",
    "plan",
    "decide_and_act",
    "Ledger",
    "set_override",
    "clear_override",
    "read_override",
    "OVERRIDE_KEY",
]
