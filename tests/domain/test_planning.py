"""domain.planning is pure: the numbers come in as plain values, no Settings needed."""

from __future__ import annotations

import pytest

from lewis_tasks.domain import planning
from lewis_tasks.domain.httpplan import HttpLimits
from lewis_tasks.errors import InvalidInput


def test_chunk_size_shrinks_when_stalling_urls_would_outrun_the_chunk() -> None:
    # 300 s soft limit less 5 s slack = 295 s; a 30 s budget (+0.2 tick) fits 9 waves of 10
    assert HttpLimits(30.0, 2000, 10, 300).chunk_size(30.0) == 90
    assert HttpLimits(30.0, 50, 10, 300).chunk_size(1.0) == 50


def test_url_budget_is_checked_against_the_cap() -> None:
    assert HttpLimits(30.0, 2000, 10, 300).url_budget(None) == 30.0
    with pytest.raises(InvalidInput, match="http.timeout"):
        HttpLimits(30.0, 2000, 10, 300).url_budget(31)


def test_loadtest_budget_stays_below_the_visibility_timeout() -> None:
    budget = planning.loadtest_budget(
        barrier_timeout=20.0, max_duration=1e9, visibility_timeout=600
    )
    _, hard = budget.time_limits(None)
    assert hard == 599


def test_io_slots_and_split() -> None:
    assert planning.io_slots("threads", 0, 8) == 8
    assert planning.io_slots("prefork", 4, 8) == 1
    assert planning.split(10, 3) == [4, 3, 3]
