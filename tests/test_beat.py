"""Exactly one active beat: the lease, the aligned schedule, and two real beats racing."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.chaos.leaders import heartbeat_runs as _runs
from lewis_tasks.infra.beat import LEADER_KEY, AlignedSchedule, LeaderLease, leader
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
        redis_url: str, tmp_path: Path, worker_redis: Any) -> None:
    from lewis_tasks.infra.config import load_settings
    from lewis_tasks.storage import heartbeats
    from lewis_tasks.storage.db import make_engine, session_scope
    from lewis_tasks.storage.migrate import upgrade

    env = stack_env(redis_url, tmp_path)
    settings = load_settings(env=env)
    upgrade(settings.database.url)
    worker_redis.delete("lewis:stats:runs", LEADER_KEY)
    with lewis_process(["worker", "control", "-n", "ctl@%h"], env, tmp_path / "ctl.log"), \
            lewis_process(["beat"], env, tmp_path / "beat-a.log") as beat_a, \
            lewis_process(["beat"], env, tmp_path / "beat-b.log") as beat_b:
        # Given two beats, one leads
        wait_for(lambda: leader(worker_redis)[0] is not None, 30, what="a beat to lead")
        first_leader = leader(worker_redis)[0]
        wait_for(lambda: _runs(worker_redis) >= 4, 40, what="4 heartbeats")
        # When the leader dies
        victim = beat_a if f":{beat_a.pid}:" in first_leader else beat_b
        kill_group(victim)
        # Then the standby takes the lease within the lock timeout and keeps firing
        wait_for(lambda: (leader(worker_redis)[0] or first_leader) != first_leader, 15,
                 what="the standby to take over")
        runs_at_takeover = _runs(worker_redis)
        wait_for(lambda: _runs(worker_redis) >= runs_at_takeover + 3, 30,
                 what="heartbeats from the new leader")
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

