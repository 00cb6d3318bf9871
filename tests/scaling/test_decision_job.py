"""The decision job on real Redis and SQLite: recorded once per slot with inputs and reason,
exported on /metrics, handed to the actuator; failures recorded and retried; stale = no action."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from lewis_tasks.cli.db import upgrade_database as upgrade
from lewis_tasks.domain.fleet import WorkerRecord
from lewis_tasks.domain.scaling import ScalingDecision
from lewis_tasks.infra.actuators import DESIRED_KEY, LOCAL_KEY, Actuator, Local, read_desired
from lewis_tasks.infra.broker import WorkerPing
from lewis_tasks.infra.collector import collect
from lewis_tasks.infra.config import load_settings
from lewis_tasks.infra.database import get_engine
from lewis_tasks.infra.fleet import write_worker
from lewis_tasks.infra.metrics_store import MetricStore
from lewis_tasks.infra.scaling import decide_and_act, set_override
from lewis_tasks.monitor.exposition import render
from lewis_tasks.monitor.view import MonitorView
from lewis_tasks.storage.db import session_scope
from lewis_tasks.storage.scaling import DecisionLedger, latest_decisions


@pytest.fixture
def env(tmp_path: Path, redis_client: redis.Redis) -> Iterator[dict[str, Any]]:
    settings = load_settings(
        env={
            "LEWIS_STACK_HOME": str(tmp_path),
            "LEWIS_SCALING_IO_TARGET_PER_WORKER": "10",
            "LEWIS_SCALING_IO_MAX_WORKERS": "8",
            "LEWIS_SCALING_STABILIZATION_WINDOW": "60",
            "LEWIS_BROKER_URL": "redis://127.0.0.1:1/0",
        },
        cwd=tmp_path,
    )
    upgrade(settings.database.url)
    engine = get_engine(settings.database)
    store = MetricStore(redis_client, settings.monitoring.metrics_interval, 3600, 100)
    yield {
        "settings": settings,
        "store": store,
        "client": redis_client,
        "session": lambda: session_scope(engine),
    }


def measure(e: dict[str, Any], io_ready: int, io_workers: int, now: float | None = None) -> None:
    """The real collector over a real io list of ``io_ready`` messages and given pings."""
    client = e["client"]
    client.delete("io")
    if io_ready:
        client.rpush("io", *[json.dumps({"n": i}) for i in range(io_ready)])
    pings = [WorkerPing(f"io-{i}@h", 1.0, ("io",)) for i in range(io_workers)]
    pings.append(WorkerPing("cpu-0@h", 1.0, ("cpu",)))
    collect(
        None,
        e["store"],
        ping_timeout=0.1,
        now=now or time.time(),  # type: ignore[arg-type]
        pinger=lambda: pings,
    )


def decide(e: dict[str, Any], slot: int, actuator: Actuator) -> dict[str, dict[str, Any]]:
    out = decide_and_act(
        None,
        e["settings"],
        e["store"],
        slot,
        DecisionLedger(e["session"]),
        actuator=actuator,
    )
    return {d["queue"]: d for d in out}


def supervisor_report(client: redis.Redis, error: str | None = None) -> None:
    client.set(
        LOCAL_KEY,
        json.dumps(
            {
                "pid": 1,
                "at": time.time(),
                "queues": {"io": {"running": ["io"], "draining": [], "error": error}},
            }
        ),
        ex=10,
    )


def test_one_decision_per_slot_recorded_exported_and_actuated_once(env: dict[str, Any]) -> None:
    client = env["client"]
    supervisor_report(client)
    # Given 50 io messages ready and one io worker
    measure(env, 50, 1)
    # When the job decides slot 7
    got = decide(env, 7, Local(client))
    # Then io goes to 5 (50 / 10 per worker), cpu stays at 1 with nothing queued
    assert (got["io"]["action"], got["io"]["desired"]) == ("up", 5)
    assert (got["cpu"]["action"], got["cpu"]["desired"]) == ("none", 1)
    assert read_desired(client, "io") == 5 and got["io"]["error"] is None
    with env["session"]() as s:
        rows = latest_decisions(s, "io")
    assert len(rows) == 1 and rows[0].slot == 7 and rows[0].inputs["ready"] == 50
    assert "load 50 / target 10" in rows[0].reason and rows[0].outcome["applied"] is True
    body = render(MonitorView(env["store"], max_age=0)).decode()
    assert 'lewis_desired_workers{queue_name="io"} 5.0' in body
    assert 'lewis_current_workers{queue_name="io"} 1.0' in body
    # and the dashboard's queue table has it as "wanted"
    assert MonitorView(env["store"], max_age=0).frame()["queues"]["io"]["desired"] == 5
    # When a second beat fires the same slot (the key wiped to see whether it acts again)
    client.delete(DESIRED_KEY.format(queue="io"))
    again = decide(env, 7, Local(client))
    # Then it records nothing and actuates nothing
    assert "already decided" in again["io"]["skipped"]
    assert read_desired(client, "io") is None
    with env["session"]() as s:
        assert len(latest_decisions(s, "io")) == 1


def test_actuator_failure_is_recorded_and_the_next_slot_retries(env: dict[str, Any]) -> None:
    client = env["client"]
    measure(env, 30, 1)
    # Given no supervisor listening: the local actuator fails
    first = decide(env, 1, Local(client))["io"]
    assert first["desired"] == 3 and "no `lewis up` supervisor" in first["error"]
    # and the cpu decision went on regardless
    assert decide(env, 1, Local(client))["cpu"]["skipped"]
    # the supervisor reports a failed start: recorded as the actuator's failure
    supervisor_report(client, error="io-2 did not start: [Errno 2] No such file")
    second = decide(env, 2, Local(client))["io"]
    assert "io-2 did not start" in second["error"]
    supervisor_report(client)
    third = decide(env, 3, Local(client))["io"]
    assert third["error"] is None and read_desired(client, "io") == 3
    with env["session"]() as s:
        errors = [r.error for r in sorted(latest_decisions(s, "io"), key=lambda r: r.slot)]
    assert errors[0] and errors[1] and errors[2] is None


def test_stale_or_missing_metrics_decide_nothing(env: dict[str, Any]) -> None:
    client = env["client"]
    supervisor_report(client)
    got = decide(env, 1, Local(client))  # nothing measured yet
    assert got["io"]["desired"] is None and "no ready, unacked, workers" in got["io"]["reason"]
    measure(env, 80, 1, now=time.time() - 120)
    got = decide(env, 2, Local(client))
    assert got["io"]["desired"] is None and "stale" in got["io"]["reason"]
    assert read_desired(client, "io") is None  # nothing handed to the actuator


def test_scale_down_waits_for_the_window_and_override_wins(env: dict[str, Any]) -> None:
    client = env["client"]
    supervisor_report(client)
    measure(env, 40, 4)
    assert decide(env, 1, Local(client))["io"]["action"] == "none"
    # load drops: the recommendation of 4 a moment ago holds the pool (window 60 s)
    measure(env, 0, 4)
    held = decide(env, 2, Local(client))["io"]
    assert (held["action"], held["desired"]) == ("hold", 4) and "held at 4" in held["reason"]
    # a manual override applies at once
    set_override(client, "io", 2, 60)
    over = decide(env, 3, Local(client))["io"]
    assert (over["action"], over["desired"]) == ("down", 2) and "override" in over["reason"]
    assert read_desired(client, "io") == 2


def test_pool_advice_reaches_the_decision(env: dict[str, Any]) -> None:
    from lewis_tasks.domain.metrics import MetricBatch, series_key

    client = env["client"]
    write_worker(client, WorkerRecord("io-0@h", ("io",), concurrency=4))
    batch = MetricBatch()
    now = time.time()
    for metric, value in (("lewis_worker_cpu_percent", 1e6), ("lewis_worker_rss_bytes", 1.0)):
        batch.gauge(series_key(metric, {"hostname": "io-0@h"}), metric, value, now)
    env["store"].write(batch, now=now)
    measure(env, 0, 1)

    class Record(Actuator):
        name = "record"
        seen: list[ScalingDecision] = []

        def apply(self, decision: ScalingDecision) -> dict[str, Any]:
            self.seen.append(decision)
            return {}

    decide(env, 1, Record())
    io = next(d for d in Record.seen if d.queue == "io")
    assert [a["advice"] for a in io.inputs["pool_advice"]] == ["grow"]
