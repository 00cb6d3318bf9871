"""The visibility timeout is derived from the longest hard time limit, not a fixed 600 s."""

from __future__ import annotations

from lewis_tasks.infra import planning
from lewis_tasks.infra.config import (
    LOADTEST_PART_OVERHEAD,
    VISIBILITY_MARGIN,
    load_settings,
)


def test_derived_from_the_longest_hard_limit() -> None:
    s = load_settings(env={})
    assert s.broker.visibility_timeout == s.tasks.time_limit + VISIBILITY_MARGIN == 390
    longer = load_settings(
        env={"LEWIS_TASKS_TIME_LIMIT": "1000", "LEWIS_TASKS_SOFT_TIME_LIMIT": "900"}
    )
    assert longer.broker.visibility_timeout == 1030
    # a load test longer than every task sets it instead, and still fits in it whole
    long_run = load_settings(env={"LEWIS_LOADTEST_MAX_DURATION": "500"})
    assert long_run.broker.visibility_timeout == 20 + 500 + 13 + VISIBILITY_MARGIN
    assert planning.loadtest_budget(long_run).max_duration == 500
    _, hard = planning.loadtest_budget(long_run).time_limits(500)
    assert hard < long_run.broker.visibility_timeout


def test_an_explicit_value_is_kept() -> None:
    assert (
        load_settings(env={"LEWIS_BROKER_VISIBILITY_TIMEOUT": "700"}).broker.visibility_timeout
        == 700
    )


def test_the_load_test_overhead_is_planning_s() -> None:
    assert LOADTEST_PART_OVERHEAD == (
        planning.BARRIER_LEAD + planning.DRAIN + planning.SLACK + planning.HARD_GAP
    )
