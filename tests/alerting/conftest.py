"""Fixtures shared by the alerting tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from lewis_tasks.domain.alerts import parse_rules
from lewis_tasks.infra import config

RULES = [
    {
        "name": "Backlog",
        "metric": "celery_queue_length",
        "aggregation": "last",
        "window": "1m",
        "threshold": 100,
        "for": "10s",
        "by": ["queue_name"],
        "annotations": {"summary": "queue {queue_name} holds {value}"},
    },
    {
        "name": "Slow",
        "metric": "celery_task_runtime",
        "aggregation": "p95",
        "threshold": 2,
        "keep_firing_for": "1m",
        "severity": "low",
        "labels": {"team": "a"},
    },
    {
        "name": "Failing",
        "metric": "celery_task_failed_total",
        "aggregation": "count",
        "denominator": ["celery_task_succeeded_total", "celery_task_failed_total"],
        "threshold": 0.1,
        "by": ["name"],
        "and": {"metric": "celery_queue_length", "aggregation": "max", "threshold": 0},
    },
    {
        "name": "Lonely",
        "metric": "celery_queue_length",
        "aggregation": "last",
        "threshold": 0,
        "by": ["queue_name"],
        "and": {"metric": "celery_active_worker_count", "comparison": "==", "threshold": 0},
    },
]


@pytest.fixture
def alert_settings(lewis_settings: Any, worker_redis: redis.Redis) -> Iterator[Any]:
    """The test stack's settings with our rules; alert and metric keys wiped around the test."""
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.storage.alerts import prune_alert_history
    from lewis_tasks.storage.db import session_scope

    def wipe() -> None:
        for key in [
            *worker_redis.scan_iter("lewis:alerts:*"),
            *worker_redis.scan_iter("lewis:metrics:*"),
        ]:
            worker_redis.delete(key)
        with session_scope(get_engine()) as session:  # the session's database: history too
            prune_alert_history(session, dt.datetime.now(dt.UTC) + dt.timedelta(days=1))

    wipe()
    settings = config.replace_section(
        lewis_settings, "alerts", rules=parse_rules(RULES), default_rules=False
    )
    config.set_settings(settings)
    try:
        yield settings
    finally:
        config.set_settings(lewis_settings)
        wipe()
