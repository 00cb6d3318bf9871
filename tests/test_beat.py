"""Exactly one active beat: the lease, the aligned schedule, and two real beats racing."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from lewis_tasks.infra.beat import (
    LEADER_KEY,
    MIN_LEASE,
    SLOT_KEY,
    AlignedSchedule,
    LeaderLease,
    leader,
    lease_timing,
)
from tests.conftest import stack_env
from tests.support.procs import kill_group, lewis_process, wait_for


def test_only_one_lease_holder_and_takeover_after_expiry(redis_client: redis.Redis) -> None:
    # (a 3 s lease: long enough that a stalled test machine cannot expire it between calls)
    first, second = LeaderLease(redis_client, ttl=3), LeaderLease(redis_client, ttl=3)
    assert first.acquire_or_renew()
    assert not second.acquire_or_renew()
    assert first.acquire_or_renew()  # the owner renews
    assert leader(redis_client)[0] == first.token
    time.sleep(3.3)  # the owner stops renewing (it died)
    assert second.acquire_or_renew()
    assert not first.acquire_or_renew()  # the old owner cannot steal it back
    second.release()
    assert leader(redis_client) == (None, 0.0)


def test_release_by_a_non_owner_changes_nothing(redis_client: redis.Redis) -> None:
    owner, other = LeaderLease(redis_client, ttl=5), LeaderLease(redis_client, ttl=5)
    assert owner.acquire_or_renew()
    other.release()
    assert redis_client.get(LEADER_KEY).decode() == owner.token


def test_aligned_schedule_fires_once_per_slot() -> None:
    sched = AlignedSchedule(run_every=10)
    now = time.time()
    this_slot_start = datetime.fromtimestamp(now - (now % 10) + 0.001, UTC)
    previous_slot = datetime.fromtimestamp(now - (now % 10) - 5, UTC)
    assert not sched.is_due(this_slot_start).is_due  # already ran in this slot
    assert sched.is_due(previous_slot).is_due  # last ran in an earlier slot
    assert 0 < sched.is_due(this_slot_start).next <= 10


@pytest.mark.slow
def test_two_beats_fire_each_slot_once_and_the_standby_takes_over(
    redis_url: str, tmp_path: Path, worker_redis: Any
) -> None:
    from lewis_tasks.cli.db import upgrade_database as upgrade
    from lewis_tasks.infra.config import load_settings
    from lewis_tasks.infra.database import make_engine
    from lewis_tasks.storage import heartbeats
    from lewis_tasks.storage.db import session_scope

    env = stack_env(redis_url, tmp_path)
    settings = load_settings(env=env)
    upgrade(settings.database.url)
    worker_redis.delete("lewis:stats:runs", LEADER_KEY)
    with (
        lewis_process(["worker", "control", "-n", "ctl@%h"], env, tmp_path / "ctl.log"),
        lewis_process(["beat"], env, tmp_path / "beat-a.log") as beat_a,
        lewis_process(["beat"], env, tmp_path / "beat-b.log") as beat_b,
    ):
        # Given two beats, one leads
        wait_for(lambda: leader(worker_redis)[0] is not None, 30, what="a beat to lead")
        first_leader = leader(worker_redis)[0]
        wait_for(lambda: _runs(worker_redis) >= 4, 40, what="4 heartbeats")
        # When the leader dies
        victim = beat_a if f":{beat_a.pid}:" in first_leader else beat_b
        kill_group(victim)
        # Then the standby takes the lease and keeps firing
        wait_for(
            lambda: (leader(worker_redis)[0] or first_leader) != first_leader,
            15,
            what="the standby to take over",
        )
        runs_at_takeover = _runs(worker_redis)
        wait_for(
            lambda: _runs(worker_redis) >= runs_at_takeover + 3,
            30,
            what="heartbeats from the new leader",
        )
        kill_group(beat_a)
        kill_group(beat_b)
        time.sleep(2.0)  # the worker finishes the last fired heartbeat
    engine = make_engine(settings.database)
    with session_scope(engine) as session:
        rows = heartbeats.heartbeats_since(session, datetime.fromtimestamp(0, UTC))
    engine.dispose()
    slots = sorted({r.slot for r in rows})
    runs = _runs(worker_redis)
    # every fired heartbeat ran in a slot of its own: no slot was fired twice by two beats
    assert len(slots) >= 7
    assert runs == len(slots), f"{runs} heartbeat runs for {len(slots)} slots"
    assert all(r.worker.startswith("ctl@") for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("beats", [2, 3])
def test_a_killed_leader_costs_at_most_one_slot_and_no_slot_is_sent_twice(
    beats: int, redis_url: str, tmp_path: Path, worker_redis: Any
) -> None:
    # No worker consumes: every heartbeat any beat sends stays in the control queue, with its
    # slot, and that queue is the record counted here (not the clock). 1 s slots and a 3 s
    # lock timeout: today's fixed 3 s lease cost three slots per failover.
    env = stack_env(redis_url, tmp_path)
    _clear_control_queue(worker_redis)
    worker_redis.delete(LEADER_KEY)
    procs: list[Any] = []
    try:
        with contextlib.ExitStack() as stack:
            for i in range(beats):
                procs.append(
                    stack.enter_context(lewis_process(["beat"], env, tmp_path / f"beat-{i}.log"))
                )
            # Given N beats, one leading and sending a heartbeat each slot
            wait_for(lambda: len(_sent_slots(worker_redis)) >= 3, 40, what="3 heartbeats")
            for _ in range(beats - 1):  # kill every leader but the last beat standing
                holder = leader(worker_redis)[0]
                assert holder is not None
                victim = next(p for p in procs if f":{p.pid}:" in holder)
                # When the leader is killed (-9) just after it sent a slot
                sent = len(_sent_slots(worker_redis))
                wait_for(
                    lambda s=sent: len(_sent_slots(worker_redis)) > s,
                    10,
                    interval=0.02,
                    what="the leader's next heartbeat",
                )
                kill_group(victim)
                # Then another beat takes over and sends the following slots
                wait_for(
                    lambda h=holder: (leader(worker_redis)[0] or h) != h,
                    15,
                    what="a standby to take over",
                )
                sent = len(_sent_slots(worker_redis))
                wait_for(
                    lambda s=sent: len(_sent_slots(worker_redis)) >= s + 3,
                    20,
                    what="heartbeats from the new leader",
                )
        slots = _sent_slots(worker_redis)
    finally:
        _clear_control_queue(worker_redis)
    # no slot was sent twice, and no more than one slot in a row is missing anywhere
    assert len(slots) == len(set(slots)), f"slots sent twice: {sorted(slots)}"
    ordered = sorted(slots)
    gaps = [b - a - 1 for a, b in zip(ordered, ordered[1:], strict=False) if b - a > 1]
    assert max(gaps, default=0) <= 1, f"slots skipped {gaps} in {ordered}"


def _sent_slots(client: redis.Redis, task: str = "lewis.control.heartbeat") -> list[int]:
    """The ``slot`` of every ``task`` message waiting in the control queue (any priority)."""
    slots = []
    for key in client.scan_iter(match="control*"):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            if message["headers"].get("task") != task:
                continue
            _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            slots.append(int(kwargs["slot"]))
    return slots


def _clear_control_queue(client: redis.Redis) -> None:
    for key in list(client.scan_iter(match="control*")):
        if client.type(key) == b"list":
            client.delete(key)


def test_the_lease_is_no_longer_than_the_shortest_interval() -> None:
    # 15 s lock timeout, 5 s heartbeats: today's lease outlived three slots
    timing = lease_timing(15, [5.0, 300.0])
    assert timing.ttl == 5.0 and timing.renew_every < timing.ttl / 2
    # a failover (the dead leader's lease running out + one standby poll) fits in < 2 slots
    assert timing.ttl + timing.standby_poll < 2 * 5.0
    assert lease_timing(3, [30.0]).ttl == 3.0  # the lock timeout still caps it
    assert lease_timing(15, [0.2]).ttl == MIN_LEASE  # never shorter than a busy machine needs


def test_a_slot_is_claimed_by_one_beat_only(redis_client: redis.Redis) -> None:
    first, second = LeaderLease(redis_client, ttl=3), LeaderLease(redis_client, ttl=3)
    assert first.claim_slot("heartbeat", 100, 1.0)
    assert not second.claim_slot("heartbeat", 100, 1.0)  # a takeover within the same slot
    assert not first.claim_slot("heartbeat", 100, 1.0)  # a late second tick of the same beat
    assert second.slot_owner("heartbeat", 100) == first.token
    assert second.claim_slot("heartbeat", 101, 1.0) and second.claim_slot("cleanup", 100, 300)
    assert 60_000 < redis_client.pttl(SLOT_KEY.format(job="heartbeat", slot=100)) <= 62_000


def _runs(client: redis.Redis) -> int:
    value = client.hget("lewis:stats:runs", "lewis.control.heartbeat")
    return int(value) if value else 0


def test_the_beat_banner_names_the_lease_the_scheduler_holds(lewis_settings: Any) -> None:
    from beat_schedule import periodic_jobs
    from lewis_tasks.infra.beat import LeaderScheduler
    from lewis_tasks.infra.celery_app import app

    previous = app.conf.beat_schedule
    app.conf.beat_schedule = periodic_jobs(lewis_settings)  # as `lewis beat` hands them in
    try:
        # celery beat prints its banner from a lazy scheduler (its schedule not yet read)
        banner = LeaderScheduler(app=app, lazy=True)
        running = LeaderScheduler(app=app)
    finally:
        app.conf.beat_schedule = previous
    # before: the banner said 15 s (the lock timeout) while the lease was 10 s
    assert banner._timing == running._timing
    assert running._timing.ttl == min(
        lewis_settings.stack.beat_lock_timeout, lewis_settings.monitoring.health_check_interval
    )
    assert f"{running._timing.ttl:g} s" in banner.info
