"""Fleet health from presence records: exit codes 0 healthy, 1 degraded, 2 down."""

from __future__ import annotations

from lewis_tasks.domain.fleet import (
    DRAINING,
    BeatView,
    Health,
    WorkerRecord,
    beat_health,
    cluster_health,
    other_databases,
    queue_health,
    worker_health,
)

QUEUES = ("io", "cpu", "control")
IO = WorkerRecord("io-1@h1", ("io",))
CPU = WorkerRecord("cpu-1@h1", ("cpu",))
CONTROL = WorkerRecord("control-1@h2", ("control",))
LEADING = BeatView("b1", ("b1", "b2"))


def test_every_queue_served_and_a_leader_is_healthy() -> None:
    assert cluster_health([IO, CPU, CONTROL], LEADING, QUEUES).health is Health.HEALTHY


def test_a_queue_without_worker_or_no_leader_is_degraded() -> None:
    v = cluster_health([IO, CPU], LEADING, QUEUES)
    assert v.health is Health.DEGRADED and "queue control: no worker" in v.reasons
    v = cluster_health([IO, CPU, CONTROL], BeatView(None, ("b2",)), QUEUES)
    assert v.health is Health.DEGRADED
    assert v.reasons == ("beat: leader changing (standby b2)",)


def test_no_worker_consuming_is_down() -> None:
    assert cluster_health([], LEADING, QUEUES).health is Health.DOWN
    drained = WorkerRecord("io-1@h1", ("io",), state=DRAINING)
    assert cluster_health([drained], LEADING, QUEUES).health is Health.DOWN


def test_a_draining_worker_no_longer_serves_its_queue() -> None:
    drained = WorkerRecord("io-2@h2", ("io",), state=DRAINING)
    assert queue_health([drained], "io").health is Health.DEGRADED
    assert queue_health([drained, IO], "io").health is Health.HEALTHY
    assert queue_health([CPU], "io").health is Health.DOWN
    v = cluster_health([IO, CPU, CONTROL, drained], LEADING, QUEUES)
    assert v.health is Health.HEALTHY and "draining: io-2@h2" in v.reasons


def test_worker_matches_by_node_or_host() -> None:
    assert worker_health([IO, CPU], "h1").health is Health.HEALTHY
    assert worker_health([IO, CPU], "cpu-1@h1").health is Health.HEALTHY
    assert worker_health([IO, CPU], "h2").health is Health.DOWN
    assert worker_health([IO, CPU], "io-1").health is Health.DOWN  # not a prefix match
    drained = WorkerRecord("io-2@h2", ("io",), state=DRAINING)
    assert worker_health([drained], "h2").health is Health.DEGRADED


def test_beat_leader_standby_or_none() -> None:
    assert beat_health(LEADING).health is Health.HEALTHY
    assert LEADING.standbys == ("b2",)
    assert beat_health(BeatView(None, ("b2",))).health is Health.DEGRADED
    assert beat_health(BeatView(None, ())).health is Health.DOWN
    assert BeatView(None, ()).describe == "NOT RUNNING"


def test_records_round_trip() -> None:
    r = WorkerRecord(
        "io-1@h1", ("io", "cpu"), state=DRAINING, pid=7, concurrency=20, database="0a1b2c3d4e5f"
    )
    assert WorkerRecord.from_dict(r.to_dict()) == r


def test_workers_on_another_database_are_named_and_silent_ones_left_out() -> None:
    same, other, silent = (
        WorkerRecord("a@h", ("io",), database="aaa"),
        WorkerRecord("b@h", ("io",), database="bbb"),
        WorkerRecord("c@h", ("io",)),
    )
    assert other_databases([same, other, silent], "aaa") == [other]
    assert other_databases([same, other, silent], "") == []  # a caller that does not say


def test_a_silent_leader_is_a_failover_under_way() -> None:
    dying = BeatView("b1", ("b1", "b2"), leader_silent=True)
    assert not dying.leading
    assert dying.describe == "leader changing (b1 silent; standby b2)"
    assert beat_health(dying).health is Health.DEGRADED
    assert cluster_health([IO, CPU, CONTROL], dying, QUEUES).health is Health.DEGRADED
