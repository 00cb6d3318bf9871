"""`lewis status`'s ping round: it stops once every expected worker answered, bounds the wait
for stragglers by a few of the first reply's round trips, and marks the expected workers that
had not answered as late (not missing); the heartbeat summary it reads comes from Redis."""

from __future__ import annotations

from typing import Any

from lewis_tasks.infra.broker import STRAGGLER_CAP, ping_round, straggler_window

LONG = 30.0  # the cap for "nobody answers": a round that waits for it has no adaptive deadline


def test_every_expected_worker_answered_ends_the_round(celery_app: Any, celery_worker: Any) -> None:
    name = celery_worker.hostname
    # Given the worker is expected (its presence record) with the queues it consumes
    pinged = ping_round(celery_app, {name: ("io", "cpu", "control")}, timeout=LONG)
    # Then it answered, with the record's queues, and nobody is late
    assert [p.worker for p in pinged.pings] == [name] and pinged.late == []
    assert pinged.pings[0].queues == ("control", "cpu", "io")
    assert pinged.waited_ms < LONG * 1000  # it did not wait for the cap


def test_a_worker_that_never_answers_is_late_after_the_stragglers_window(
    celery_app: Any, celery_worker: Any
) -> None:
    name = celery_worker.hostname
    # Given a presence record of a worker that will not answer
    pinged = ping_round(celery_app, {name: ("io",), "ghost@nowhere": ("cpu",)}, timeout=LONG)
    # Then the round ends after the stragglers' window, the ghost marked late
    assert [p.worker for p in pinged.pings] == [name]
    assert pinged.late == ["ghost@nowhere"]
    assert pinged.waited_ms < LONG * 1000


def test_a_worker_without_a_record_is_asked_for_its_queues(
    celery_app: Any, celery_worker: Any
) -> None:
    pinged = ping_round(celery_app, {}, timeout=LONG)
    assert [p.worker for p in pinged.pings] == [celery_worker.hostname]
    assert set(pinged.pings[0].queues) == {"io", "cpu", "control"} and pinged.late == []


def test_the_stragglers_window_is_a_few_round_trips_within_bounds() -> None:
    assert straggler_window(0.0) > 0
    assert straggler_window(0.02) == 4 * 0.02
    assert straggler_window(10.0) == STRAGGLER_CAP


def test_a_late_worker_is_marked_and_is_no_missing_worker() -> None:
    from lewis_tasks.cli.stack import _fleet_status, format_status

    queues = {
        "io": {"ready": 0, "unacked": 0, "workers": [], "late": ["io-1@a"]},
        "cpu": {"ready": 0, "unacked": 0, "workers": [], "late": []},
    }
    fleet = _fleet_status(None, None, queues, [])
    assert fleet["problems"][0] == "queue cpu: no worker" and len(fleet["problems"]) == 2
    report = {
        "broker": {"url": "redis://h", "up": True, "ping_ms": 1.0},
        "queues": queues,
        "ping_waited_ms": 80.0,
        "beat": {"alive": False, "leader": None},
        "heartbeat": None,
        "metrics": {},
    }
    assert "io-1@a (late: no ping within 80 ms)" in format_status(report)


def test_the_heartbeat_leaves_its_summary_in_redis(
    celery_app: Any, celery_worker: Any, lewis_settings: Any
) -> None:
    from lewis_tasks.cli.stack import _last_heartbeat
    from lewis_tasks.infra.fleet import read_heartbeat
    from lewis_tasks.infra.redis_client import get_redis
    from lewis_tasks.producer import submit

    client = get_redis()
    client.delete("lewis:heartbeat:last")
    result = submit("lewis.control.heartbeat", args=[12345]).wait(timeout=LONG)
    summary = read_heartbeat(client)
    assert summary is not None and summary["slot"] == 12345
    assert summary["workers"] == len(result["workers"]) >= 1
    assert _last_heartbeat(client) == summary


def test_a_watch_refresh_imports_nothing_new(
    celery_app: Any, celery_worker: Any, lewis_settings: Any
) -> None:
    import sys

    from lewis_tasks.cli.stack import collect_status, format_status

    # Given one refresh of `lewis status --watch` done
    format_status(collect_status(LONG))
    loaded = set(sys.modules)
    # When it refreshes again (the same loop, in the same process)
    report = collect_status(LONG)
    format_status(report)
    # Then it answered again without importing anything
    assert [w["worker"] for w in report["workers"]] == [celery_worker.hostname]
    assert set(sys.modules) - loaded == set()
