"""The chaos suite's experiments, shortened (``python -m bench.chaos --short``), as tests.

One real cluster (broker redis-server, two io workers, a cpu worker, a control worker) serves
the worker-kill, poison and beat experiments, then takes the broker faults last: a broker
fault may leave its workers dead. Figures come from a ledger Redis outside the faults
(bench/chaos/ledger.py). Recovery within the configured timeouts is what the bench reports;
here the experiments only have to recover (no timed assertions on a shared machine).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos.experiments import Cluster, cluster
from bench.chaos.ledger import Figures
from bench.chaos.suite import experiments, run_embedded

pytestmark = pytest.mark.slow

SHORT = experiments(short=True)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(logs=Path(tmp_path_factory.mktemp("chaos-logs"))) as running:
        yield running


def recovered(figures: Figures) -> None:
    """Something ran, every duplicate run was harmless, and the system came back."""
    assert figures.submitted > 0, figures.line()
    assert figures.harmless, figures.line()
    assert figures.recovery_s is not None, figures.line()


def no_loss(figures: Figures) -> None:
    recovered(figures)
    assert figures.lost <= figures.allowed_lost, figures.line()


# A worker killed between taking a message with BRPOP and recording it as unacked (kombu's
# Redis transport, a round trip later) lost it: 1–3 tasks in each of four full io kill runs.
# Our transport takes and records in one Lua step (docs/atomic-unacked.md): the io kill
# assertion is plain. The redis kill -9 lost 0–2 of ~136 in two of five full runs; the same
# window was one candidate, Redis answering a write whose AOF write it postponed behind a slow
# everysec fsync is the other, which no consumer change closes: its assertion runs and reports
# XFAIL/XPASS, not strict, since most runs lose nothing.
AOF_WINDOW = pytest.mark.xfail(
    strict=False,
    reason=(
        "a redis-server killed with kill -9 may lose writes it answered but had not yet written to "
        "its AOF (appendfsync everysec; bench.chaos: redis kill)"
    ),
)


@pytest.fixture(scope="module")
def io_kill(chaos: Cluster) -> tuple[Figures, Figures]:
    tasks, scans = SHORT["io_kill"](chaos)
    return tasks, scans


def test_io_worker_killed_mid_task_and_mid_scan_recovers_harmlessly(
    io_kill: tuple[Figures, Figures],
) -> None:
    tasks, scans = io_kill
    recovered(tasks)
    assert tasks.rerun >= 1, tasks.line()  # the kill did interrupt work, which ran again
    no_loss(scans)  # every scan done, right ports, its rows stored once


def test_io_worker_killed_loses_no_task(io_kill: tuple[Figures, Figures]) -> None:
    # on main before branch `atomic`: kombu's BRPOP window lost 1–3 of ~1,250 per full run
    assert io_kill[0].lost == 0, io_kill[0].line()


def test_a_second_host_killed_whole_mid_scan_loses_nothing(chaos: Cluster) -> None:
    # issue 21, item 5: its tasks and chunks come back to the first host's workers after the
    # visibility timeout (16 s here, not 600 s), the scans it held finish exact
    tasks, scans = SHORT["host_kill"](chaos)
    no_loss(tasks)
    no_loss(scans)
    assert tasks.rerun >= 1 and scans.rerun >= 1, (tasks.line(), scans.line())


def test_cpu_pool_child_killed_mid_task_and_mid_merge_loses_nothing(chaos: Cluster) -> None:
    tasks, scans = SHORT["cpu_kill"](chaos)
    no_loss(tasks)
    assert tasks.rerun >= 1, tasks.line()
    no_loss(scans)  # the scan whose merge died is merged again: done, findings stored once
    assert scans.faults == 1, scans.line()


def test_poison_task_fails_after_the_cap_and_its_neighbours_complete(chaos: Cluster) -> None:
    figures = SHORT["poison"](chaos)
    no_loss(figures)  # the poison is accounted for as failed with the cap named
    assert any("started 3×" in n for n in figures.notes), figures.line()


@pytest.fixture(scope="module")
def three_beats(chaos: Cluster) -> Figures:
    return SHORT["beats3"](chaos)


def test_three_beats_with_the_leader_killed_never_fire_a_slot_twice(three_beats: Figures) -> None:
    assert three_beats.completed > 0 and three_beats.recovery_s is not None, three_beats.line()
    assert three_beats.duplicates == 0 and three_beats.harmless, three_beats.line()


def test_three_beats_failover_skips_at_most_one_slot(three_beats: Figures) -> None:
    # on main before branch `input`: 3 slots skipped per failover (lease 3 s, 1 s slots)
    assert three_beats.lost <= three_beats.faults, three_beats.line()


def test_redis_paused_past_the_app_client_timeout_loses_nothing(chaos: Cluster) -> None:
    # 6 s: past the app's own Redis clients (5 s), not kombu's 30 s (the bench pauses 35 s)
    no_loss(SHORT["redis_pause"](chaos))


@pytest.fixture(scope="module")
def redis_kill(chaos: Cluster) -> Figures:
    # (the cluster's last experiment: a broker fault may leave its workers dead)
    return SHORT["redis_kill"](chaos)


def test_redis_killed_and_restarted_under_load_recovers(redis_kill: Figures) -> None:
    # on main before branch `faults`: io and cpu workers died (kombu AttributeError
    # 'NoneType' … 'hostname' acking after the reconnect), 46 of 133 tasks lost
    recovered(redis_kill)


@AOF_WINDOW
def test_redis_killed_and_restarted_loses_no_task(redis_kill: Figures) -> None:
    assert redis_kill.lost == 0, redis_kill.line()


def test_lewis_up_restarts_its_killed_redis_and_loses_nothing() -> None:
    # on main before branch `faults`: the supervisor stopped the whole stack
    no_loss(run_embedded(short=True))
