"""End to end on running processes: two beats (the leader killed in the middle of `for`) and a
control worker evaluate; a backlog fires once and resolves once, at a webhook that first answers
500 and at a real Alertmanager."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from lewis_tasks.domain.alerts import parse_rule
from lewis_tasks.infra.alerting import AlertEngine
from lewis_tasks.infra.beat import leader
from lewis_tasks.infra.metrics_store import MetricStore
from tests.conftest import stack_env
from tests.support.alertpeers import ALERTMANAGER, alertmanager, am_alerts, webhook_receiver
from tests.support.procs import kill_group, lewis_process, logs_on_failure, wait_for

FOR = 4  # seconds
RULE = {
    "name": "IoBacklog",
    "metric": "celery_queue_length",
    "aggregation": "last",
    "window": "5s",
    "threshold": 50,
    "for": f"{FOR}s",
    "by": ["queue_name"],
    "match": {"queue_name": "io"},
    "severity": "high",
    "annotations": {"summary": "io holds {value} messages"},
}


def _state(engine: AlertEngine) -> dict[str, Any]:
    return {a.rule: a for a in engine.load()[1].values() if a.rule == "IoBacklog"}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(
    ALERTMANAGER is None,
    reason="prometheus-alertmanager not installed (scripts/ci-deps installs it)",
)
def test_a_queue_without_consumer_fires_after_for_and_resolves_when_drained(
    redis_url: str, tmp_path: Path, lewis_settings: Any, worker_redis: redis.Redis
) -> None:
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.producer.base import submit_many
    from lewis_tasks.storage.alerts import alert_history
    from lewis_tasks.storage.db import session_scope

    for key in [
        *worker_redis.scan_iter("lewis:metrics:*"),
        *worker_redis.scan_iter("lewis:alerts:*"),
    ]:
        worker_redis.delete(key)
    worker_redis.delete("io")
    engine = AlertEngine(MetricStore(worker_redis, 1, 3600, 1000), [parse_rule(RULE)], interval=1)
    # the webhook refuses the first notification: the notify task retries, evaluations go on
    with webhook_receiver(500) as hook, alertmanager(tmp_path, hook.url) as am_url:
        env = stack_env(
            redis_url,
            tmp_path,
            LEWIS_DATABASE_URL=lewis_settings.database.url,
            LEWIS_MONITORING_METRICS_INTERVAL="1",
            LEWIS_MONITORING_REPORT_INTERVAL="0.5",
            LEWIS_ALERTS_EVALUATION_INTERVAL="1",
            LEWIS_ALERTS_DEFAULT_RULES="false",
            LEWIS_ALERTS_RULES=json.dumps([RULE]),
            LEWIS_ALERTS_LOG="false",
            LEWIS_ALERTS_WEBHOOK_URL=f"{hook.url}/hook",
            LEWIS_ALERTS_ALERTMANAGER_URL=am_url,
            LEWIS_TASKS_RETRY_BACKOFF_MAX="1",
        )
        with (
            logs_on_failure(tmp_path),
            lewis_process(["worker", "control", "-n", "al-control@%h"], env, tmp_path / "c.log"),
            lewis_process(["beat"], env, tmp_path / "beat-a.log") as beat_a,
            lewis_process(["beat"], env, tmp_path / "beat-b.log") as beat_b,
        ):
            # Given evaluations running under one of two beats, and no worker on io
            wait_for(lambda: engine.load()[0] is not None, 60, what="a first evaluation")
            # When the io queue fills up
            submit_many("lewis.bench.io_noop", [((), {})] * 200, pack=1)  # 200 messages
            # and the leading beat is killed while the alert is pending
            wait_for(
                lambda: getattr(_state(engine).get("IoBacklog"), "state", "") == "pending",
                60,
                what="IoBacklog pending",
            )
            holder = leader(worker_redis)[0] or ""
            kill_group(beat_a if f":{beat_a.pid}:" in holder else beat_b)
            # Then the alert fires no sooner than `for` after it went pending
            wait_for(
                lambda: getattr(_state(engine).get("IoBacklog"), "state", "") == "firing",
                60,
                what="IoBacklog firing",
            )
            alert = _state(engine)["IoBacklog"]
            assert alert.fired_at is not None and alert.fired_at - alert.active_at >= FOR
            assert alert.value == 200 and alert.labels == {"queue_name": "io"}
            # and the real Alertmanager lists it (its own receiver answers 200)
            wait_for(
                lambda: any(
                    a["labels"].get("alertname") == "IoBacklog" and a["status"]["state"] == "active"
                    for a in am_alerts(am_url)
                ),
                60,
                what="IoBacklog active in Alertmanager",
            )
            # and the refused webhook notification arrives on a retry while evaluations go on
            wait_for(lambda: hook.accepted("/hook"), 60, what="the firing notification accepted")
            assert hook.answered(500) == 1
            slot = engine.load()[0] or 0
            # (60 s: on a loaded machine a 1 s evaluation whose message waited past its expiry is
            # skipped, as it should be; CI once saw none for 30 s with four suites running)
            wait_for(lambda: (engine.load()[0] or 0) >= slot + 2, 60, what="evaluations going on")
            # When a worker drains the queue
            with lewis_process(["worker", "io", "-n", "al-io@%h"], env, tmp_path / "io.log"):
                wait_for(
                    lambda: any(b["status"] == "resolved" for b in hook.accepted("/hook")),
                    90,
                    what="the resolved notification",
                )
                # and Alertmanager hears of the resolve and sends it on itself
                wait_for(
                    lambda: any(b["status"] == "resolved" for b in hook.accepted("/am")),
                    60,
                    what="Alertmanager's resolved notification",
                )
    # Then one firing and one resolved notification (two beats, one killed: nothing doubled),
    # and the history holds every transition
    assert [b["status"] for b in hook.accepted("/hook")] == ["firing", "resolved"]
    with session_scope(get_engine()) as s:
        rows = alert_history(s, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10), "IoBacklog")
        moves = [(r.from_state, r.to_state) for r in rows if r.labels == {"queue_name": "io"}]
    # (the rule's own nodata alert may come and go too: a 1 s collector on a busy control
    # worker can miss two slots, and a stale gauge is shown as such)
    assert moves == [("inactive", "pending"), ("pending", "firing"), ("firing", "resolved")], [
        (r.at, r.from_state, r.to_state, r.value, r.fingerprint) for r in rows
    ]
