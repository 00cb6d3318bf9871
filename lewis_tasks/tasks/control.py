"""Control-queue jobs fired by beat: the heartbeat and housekeeping."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from ..errors import InvalidInput
from ..infra.broker import ping_workers
from ..infra.celery_app import app
from ..infra.config import get_settings

log = logging.getLogger(__name__)


@app.task(name="lewis.control.heartbeat", count_runs=True)
def heartbeat(slot: int | None = None) -> dict[str, Any]:
    """Ping every worker through the broker; record who answered and how fast, once per slot."""
    from ..infra.database import get_engine
    from ..storage import heartbeats
    from ..storage.db import session_scope

    settings = get_settings()
    interval = settings.monitoring.health_check_interval
    if slot is None:
        slot = int(time.time() // interval)
    elif isinstance(slot, bool) or not isinstance(slot, int):
        raise InvalidInput(f"heartbeat slot must be an integer, got {slot!r}")
    pings = ping_workers(app, timeout=settings.monitoring.ping_timeout)
    new = 0
    with session_scope(get_engine()) as session:
        for ping in pings:
            new += heartbeats.record_heartbeat(
                session,
                slot=slot,
                worker=ping.worker,
                alive=True,
                rtt_ms=ping.rtt_ms,
                queues=list(ping.queues),
            )
    _summarise(slot, pings, settings.monitoring.retention)
    return {"slot": slot, "workers": [p.to_dict() for p in pings], "new": new}


def _summarise(slot: int, pings: list[Any], ttl: float) -> None:
    """The heartbeat in one Redis key as well, for `lewis status` (the rows stay the record)."""
    import redis

    from ..infra.fleet import write_heartbeat
    from ..infra.runtime import runtime

    rtts = [p.rtt_ms for p in pings]
    if not pings:
        return  # as the rows: a slot nobody answered leaves the last one standing
    try:
        write_heartbeat(
            runtime().redis(),
            {
                "slot": slot,
                "recorded_at": time.time(),
                "workers": len(pings),
                "rtt_ms_max": max(rtts),
            },
            ttl,
        )
    except redis.RedisError as exc:  # status then reads the rows
        log.warning("heartbeat summary not written: %s", exc)


@app.task(name="lewis.control.cleanup", count_runs=True)
def cleanup(slot: int | None = None) -> dict[str, Any]:
    """Drop heartbeats and scaling decisions older than the retention window, alert history
    past its own."""
    from ..infra.database import get_engine
    from ..storage import heartbeats
    from ..storage.alerts import prune_alert_history
    from ..storage.db import session_scope
    from ..storage.scaling import prune_decisions

    settings = get_settings()
    now = dt.datetime.now(dt.UTC)
    cutoff = now - dt.timedelta(seconds=settings.monitoring.retention)
    history_cutoff = now - dt.timedelta(seconds=settings.alerts.history_retention)
    with session_scope(get_engine()) as session:
        removed = heartbeats.prune_heartbeats(session, older_than=cutoff)
        removed += prune_decisions(session, older_than=cutoff)
        transitions = prune_alert_history(session, older_than=history_cutoff)
    return {"slot": slot, "removed": removed, "alert_transitions_removed": transitions}


@app.task(name="lewis.control.collect_metrics", count_runs=True)
def collect_metrics(slot: int | None = None) -> dict[str, Any]:
    """Queue depths, workers online, the workers' reports rolled up (infra/collector.py)."""
    import redis

    from ..infra.collector import collect
    from ..infra.database import get_engine
    from ..infra.metrics_store import store_from_settings
    from ..storage.db import session_scope
    from ..storage.summary import stored_work

    if slot is not None and (isinstance(slot, bool) or not isinstance(slot, int)):
        raise InvalidInput(f"metrics slot must be an integer, got {slot!r}")

    def work() -> dict[str, Any]:
        try:
            with session_scope(get_engine()) as session:
                return stored_work(session)
        except Exception as exc:  # the database is optional here: metrics go on without it
            log.warning("metrics: stored scans/batches unavailable: %s", exc)
            return {}

    try:
        snapshot = collect(
            app,
            store_from_settings(),
            ping_timeout=get_settings().monitoring.ping_timeout,
            work=work,
        )
    except redis.RedisError as exc:
        log.warning("metrics: Redis unavailable, collection of slot %s skipped: %s", slot, exc)
        return {"slot": slot, "skipped": True}
    return {
        "slot": slot,
        "queues": {q: v["total"] for q, v in snapshot["queues"].items()},
        "workers_up": sorted(h for h, w in snapshot["workers"].items() if w["up"]),
    }


@app.task(name="lewis.control.decide_scaling", count_runs=True)
def decide_scaling(slot: int | None = None) -> dict[str, Any]:
    """Each scaled queue's decision for this slot, recorded once and actuated (infra/scaling.py)."""
    import redis

    from ..infra.database import get_engine
    from ..infra.metrics_store import store_from_settings
    from ..infra.scaling import decide_and_act
    from ..storage.db import session_scope
    from ..storage.scaling import DecisionLedger

    settings = get_settings()
    if slot is None:
        slot = int(time.time() // settings.scaling.interval)
    elif isinstance(slot, bool) or not isinstance(slot, int):
        raise InvalidInput(f"scaling slot must be an integer, got {slot!r}")
    try:
        ledger = DecisionLedger(lambda: session_scope(get_engine()))
        decisions = decide_and_act(app, settings, store_from_settings(), slot, ledger)
    except redis.RedisError as exc:
        log.warning("scaling: Redis unavailable, slot %s not decided: %s", slot, exc)
        return {"slot": slot, "skipped": True}
    return {"slot": slot, "decisions": decisions}


def _check_slot(what: str, slot: Any) -> None:
    if slot is not None and (isinstance(slot, bool) or not isinstance(slot, int)):
        raise InvalidInput(f"{what} slot must be an integer, got {slot!r}")


@app.task(name="lewis.control.evaluate_alerts", count_runs=True)
def evaluate_alerts(slot: int | None = None) -> dict[str, Any]:
    """Advance every alert rule one slot (infra/alerting.py); notify off this path."""
    import redis

    from ..infra.alerting import drain_outbox, engine_from_settings

    _check_slot("alerts", slot)
    engine = engine_from_settings()
    slot = engine.current_slot() if slot is None else slot
    try:
        tick = engine.tick(slot)
    except redis.RedisError as exc:
        log.warning("alerts: Redis unavailable, evaluation of slot %s skipped: %s", slot, exc)
        return {"slot": slot, "skipped": True}
    if tick.committed:
        notify_alerts.apply_async(kwargs={"slot": slot}, expires=_notify_expiry())
    try:
        drain_outbox(engine.client, write_history)
    except Exception as exc:  # kept in the outbox: the next tick writes them
        log.warning("alerts: history not written yet (%s: %s)", type(exc).__name__, exc)
    return tick.to_dict()


def write_history(transitions: list[dict[str, Any]]) -> int:
    """The database half of the alert outbox's drain (infra/alerting.py drain_outbox)."""
    from ..infra.database import get_engine
    from ..storage.alerts import record_transitions
    from ..storage.db import session_scope

    with session_scope(get_engine()) as session:
        return record_transitions(session, transitions)


def _notify_expiry() -> float:
    s = get_settings()
    return float(max(s.alerts.resend_delay, s.alerts.evaluation_interval) * 4)


@app.task(name="lewis.control.notify_alerts", bind=True, count_runs=True)
def notify_alerts(self: Any, slot: int | None = None) -> dict[str, Any]:
    """Send what is due to the log, the webhook and Alertmanager; a receiver that failed is
    retried with backoff (the others are not sent twice) until a newer evaluation's notify
    takes over, so a hanging receiver costs at most one notify per evaluation interval."""
    from ..errors import LewisError
    from ..infra.alerting import engine_from_settings
    from ..infra.notifiers import notifier_from_settings

    _check_slot("alerts", slot)
    settings = get_settings()
    last, alerts = engine_from_settings().load()
    result = notifier_from_settings().run(alerts)
    superseded = slot is not None and last is not None and last > slot
    if result.failures and superseded:  # a newer evaluation's notify sends what is still due
        log.warning(
            "alerts: notification failed, left to slot %s: %s", last, "; ".join(result.failures)
        )
    elif result.failures:
        retries = self.request.retries or 0
        countdown = min(settings.tasks.retry_backoff_max, 2**retries)
        exc = LewisError("; ".join(result.failures))  # not TransientError: no autoretry on top
        log.warning(
            "alerts: notification failed (retry %d in %ss): %s", retries + 1, countdown, exc
        )
        raise self.retry(exc=exc, countdown=countdown, max_retries=settings.alerts.notify_retries)
    return {"slot": slot, **result.to_dict()}
