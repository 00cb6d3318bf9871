"""Control-queue jobs fired by beat: the heartbeat and housekeeping."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from ..errors import InvalidInput
from ..infra.broker import ping_workers
from ..infra.celery_app import app
from ..infra.config import get_settings


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
    return {"slot": slot, "workers": [p.to_dict() for p in pings], "new": new}


@app.task(name="lewis.control.cleanup", count_runs=True)
def cleanup(slot: int | None = None) -> dict[str, Any]:
    """Drop heartbeats older than the retention window."""
    from ..storage import heartbeats
    from ..storage.db import get_engine, session_scope

    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=get_settings().monitoring.retention)
    with session_scope(get_engine()) as session:
        removed = heartbeats.prune_heartbeats(session, older_than=cutoff)
    return {"slot": slot, "removed": removed}
