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


def _work(**changes: object) -> planning.ChunkWork:
    base: dict[str, object] = dict(
        ports=8192, concurrency=4096, timeout=1.0, retries=1, banner_timeout=2.0
    )
    return planning.ChunkWork(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("work", "soft", "deadline"),
    [
        # 2 waves × 2 attempts × 1 s + 3 banner waits × 2 s = 10 s planned, × 2
        (_work(), 300, 20.0),
        # a small chunk: 4 s of connects and identification planned, the floor holds
        (_work(ports=48, identify=False), 300, planning.CHUNK_FLOOR),
        # a thin share of the concurrency: 128 waves × 2 s + 6 s
        (_work(concurrency=64), 1000, 2 * (128 * 2.0 + 6.0)),
        # more than the soft limit's work share allows: the cap
        (_work(concurrency=64), 100, 100 * planning.WORK_SHARE),
        # the cap wins over the floor too
        (_work(ports=1), 5, 5 * planning.WORK_SHARE),
        # a rate the chunk has alone (a scan of one chunk): every attempt waits for a permit
        (_work(ports=100, rate=50.0, rate_sharers=1), 300, 2 * (2.0 + 100 * 2 / 50 + 6.0)),
        # shared with 3 sibling chunks of the same host: 4 × the permits' wait
        (_work(ports=100, rate=50.0, rate_sharers=4), 300, 2 * (2.0 + 4 * 100 * 2 / 50 + 6.0)),
        # a rate shared with chunks it cannot count: the cap
        (_work(ports=100, rate=50.0), 300, 300 * planning.WORK_SHARE),
        # three retries: four attempts a wave
        (_work(retries=3, identify=False), 300, 2 * 2 * 4 * 1.0),
    ],
)
def test_a_chunks_deadline_comes_from_its_planned_work(
    work: planning.ChunkWork, soft: float, deadline: float
) -> None:
    assert planning.chunk_deadline(work, soft) == pytest.approx(deadline)
