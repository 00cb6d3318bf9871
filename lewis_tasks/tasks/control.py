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
    from ..storage import heartbeats
    from ..storage.db import get_engine, session_scope

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
            new += heartbeats.record_heartbeat(session, slot=slot, worker=ping.worker, alive=True,
                                               rtt_ms=ping.rtt_ms, queues=list(ping.queues))
    _summarise(slot, pings, settings.monitoring.retention)
    return {"slot": slot, "workers": [p.to_dict() for p in pings], "new": new}


def _summarise(slot: int, pings: list[Any], ttl: float) -> None:
    """The heartbeat in one Redis key as well, for `lewis status` (the rows stay the record)."""
    import redis

    from ..infra.fleet import write_heartbeat
    from ..infra.redis_client import get_redis

    rtts = [p.rtt_ms for p in pings]
    if not pings:
        return  # as the rows: a slot nobody answered leaves the last one standing
    try:
        write_heartbeat(get_redis(), {"slot": slot, "recorded_at": time.time(),
                                      "workers": len(pings), "rtt_ms_max": max(rtts)}, ttl)
    except redis.RedisError as exc:  # status then reads the rows
        log.warning("heartbeat summary not written: %s", exc)


@app.task(name="lewis.control.cleanup", count_runs=True)
def cleanup(slot: int | None = None) -> dict[str, Any]:
    """Drop heartbeats older than the retention window."""
    from ..storage import heartbeats
    from ..storage.db import get_engine, session_scope

    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=get_settings().monitoring.retention)
    with session_scope(get_engine()) as session:
        removed = heartbeats.prune_heartbeats(session, older_than=cutoff)
    return {"slot": slot, "removed": removed}


@app.task(name="lewis.control.collect_metrics", count_runs=True)
def collect_metrics(slot: int | None = None) -> dict[str, Any]:
    """Queue depths, workers online, the workers' reports rolled up (infra/collector.py)."""
    import redis

    from ..infra.collector import collect, stored_work
    from ..infra.metrics_store import store_from_settings

    if slot is not None and (isinstance(slot, bool) or not isinstance(slot, int)):
        raise InvalidInput(f"metrics slot must be an integer, got {slot!r}")

    def work() -> dict[str, Any]:
        try:
            return stored_work()
        except Exception as exc:  # the database is optional here: metrics go on without it
            log.warning("metrics: stored scans/batches unavailable: %s", exc)
            return {}

    try:
        snapshot = collect(app, store_from_settings(),
                           ping_timeout=get_settings().monitoring.ping_timeout, work=work)
    except redis.RedisError as exc:
        log.warning("metrics: Redis unavailable, collection of slot %s skipped: %s", slot, exc)
        return {"slot": slot, "skipped": True}
    return {"slot": slot, "queues": {q: v["total"] for q, v in snapshot["queues"].items()},
            "workers_up": sorted(h for h, w in snapshot["workers"].items() if w["up"])}
