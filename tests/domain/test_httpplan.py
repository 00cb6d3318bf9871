"""One HTTP batch plan: the budget, the chunks and the worst case come from the same numbers."""

from __future__ import annotations

import pytest

from lewis_tasks.domain.httpplan import SLACK, HttpLimits, plan_http_batch
from lewis_tasks.errors import InvalidInput

LIMITS = HttpLimits(url_timeout=10.0, chunk_cap=2000, max_connections=100, soft_time_limit=60.0)


def test_the_chunks_cover_every_url_once() -> None:
    plan = plan_http_batch(2500, None, LIMITS)
    assert plan.budget == 10.0 and plan.chunk_seconds == 60.0 - SLACK
    covered = [i for start in plan.starts for i in range(start, min(start + plan.size, 2500))]
    assert covered == list(range(2500)) and plan.chunks == len(plan.starts)


def test_a_chunk_of_stalled_urls_fits_its_time() -> None:
    plan = plan_http_batch(10_000, 10.0, LIMITS)
    waves = -(-plan.size // LIMITS.max_connections)
    assert waves * (plan.budget + 0.2) <= plan.chunk_seconds


def test_more_urls_or_longer_budgets_wait_longer() -> None:
    one = plan_http_batch(1, None, LIMITS).worst_case_seconds()
    assert one > 10.0 and plan_http_batch(1, 1.0, LIMITS).worst_case_seconds() < one
    size = plan_http_batch(1, None, LIMITS).size
    assert (
        plan_http_batch(3 * size, None, LIMITS).worst_case_seconds()
        > plan_http_batch(size, None, LIMITS).worst_case_seconds()
        >= one
    )


def test_a_budget_over_http_timeout_is_refused() -> None:
    with pytest.raises(InvalidInput, match="http.timeout"):
        plan_http_batch(1, 11.0, LIMITS)
