"""Restarts: Redis restarted in the middle of `for` (AOF on, as the embedded stack runs it),
and the evaluation task run twice for one slot (two beats, a redelivery)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from lewis_tasks.infra.alerting import AlertEngine
from lewis_tasks.infra.notifiers import Notifier, Receivers
from lewis_tasks.infra.redis_server import EmbeddedRedis
from tests.alerting.test_engine import BACKLOG, STEP, put_depth, store_of
from tests.support.alertpeers import webhook_receiver


def test_a_redis_restart_in_the_middle_of_for_loses_no_transition_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis", appendonly=True).start()
    try:
        with webhook_receiver() as hook:
            receivers = Receivers(log=False, webhook_url=f"{hook.url}/hook")

            def tick(slot: int, depth: float) -> Any:
                client = redis.Redis.from_url(server.url)  # a fresh process's client
                try:
                    put_depth(store_of(client), depth, slot * STEP + 1)
                    result = AlertEngine(store_of(client), [BACKLOG], STEP).tick(
                        slot, now=slot * STEP + 2
                    )
                    Notifier(client, [BACKLOG], receivers).run(result.alerts, now=slot * STEP + 3)
                    return result
                finally:
                    client.close()

            # Given an alert pending for one evaluation of its 20 s `for`
            assert [t.to_state for t in tick(100, 500).transitions] == ["pending"]
            # When Redis restarts
            server.stop()
            server.start()
            # Then `for` goes on from where it was: firing at 20 s, not 20 s after the restart
            assert tick(101, 500).transitions == []
            assert [t.to_state for t in tick(102, 500).transitions] == ["firing"]
            server.stop()
            server.start()
            tick(103, 500)  # after another restart, the firing notification is not sent again
            assert [t.to_state for t in tick(104, 10).transitions] == ["resolved"]
            assert [b["status"] for b in hook.accepted()] == ["firing", "resolved"]
            client = redis.Redis.from_url(server.url)
            assert client.llen("lewis:alerts:outbox") == 3  # every transition kept for the db
            client.close()
    finally:
        server.stop()


def test_the_evaluation_task_run_twice_for_a_slot_commits_it_once(
    alert_settings: Any, worker_redis: redis.Redis
) -> None:
    from lewis_tasks.tasks.control import evaluate_alerts

    slot = int(__import__("time").time() // alert_settings.alerts.evaluation_interval)
    first = evaluate_alerts.run(slot=slot)
    second = evaluate_alerts.run(slot=slot)
    assert first["committed"] is True and second["committed"] is False
    assert second["reason"] == f"slot {slot} already evaluated"
    assert evaluate_alerts.run(slot=slot - 1)["committed"] is False  # a late, older slot too
    worker_redis.delete("control")  # the one notify task the first run queued


def test_cleanup_drops_alert_history_past_its_retention(alert_settings: Any) -> None:
    import datetime as dt
    import time

    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.storage.alerts import alert_history, record_transitions
    from lewis_tasks.storage.db import session_scope
    from lewis_tasks.tasks.control import cleanup

    def move(at: float) -> dict[str, Any]:
        return {
            "fingerprint": "R[]",
            "rule": "R",
            "labels": {},
            "from_state": "pending",
            "to_state": "firing",
            "at": at,
            "value": 1.0,
            "severity": "low",
            "summary": "",
        }

    old, recent = time.time() - 31 * 86400, time.time() - 60
    with session_scope(get_engine()) as s:
        assert record_transitions(s, [move(old), move(recent)]) == 2
    assert cleanup.run()["alert_transitions_removed"] == 1
    with session_scope(get_engine()) as s:
        left = alert_history(s, dt.datetime.fromtimestamp(0, dt.UTC))
        assert [round(r.at.timestamp()) for r in left] == [round(recent)]
