"""submit_many's default pack size from a task's measured runtime (domain/packing.py)."""

from __future__ import annotations

import math

import pytest

from lewis_tasks.domain.packing import DEFAULT_CAP, pack_size


@pytest.mark.parametrize(
    ("p95", "visibility", "want", "why"),
    [
        (None, 3600, 1, "never measured: one call to a message"),
        (math.nan, 3600, 1, "a broken measurement is no measurement"),
        (-0.001, 3600, 1, "nor is a negative one"),
        (0.0, 3600, DEFAULT_CAP, "no measurable work: the cap"),
        (0.00005, 3600, 500, "a 50 us no-op: 1000 fit 50 ms, the cap holds it to 500"),
        (0.0002, 3600, 250, "200 us: 250 fit 50 ms"),
        (0.001, 3600, 50, "1 ms: 50"),
        (0.0049, 3600, 10, "4.9 ms: 10 (floor, never over the budget)"),
        (0.05, 3600, 1, "a call as long as the budget travels alone"),
        (3.0, 3600, 1, "and so does a longer one"),
        (0.001, 2.0, 20, "a 2 s visibility timeout: its 1 % share (20 ms) binds first"),
        (0.001, 0.05, 1, "a share smaller than one call: one call"),
    ],
)
def test_pack_size_fits_the_work_budget(
    p95: float | None, visibility: float, want: int, why: str
) -> None:
    assert pack_size(p95, visibility) == want, why


def test_a_pack_never_holds_more_than_the_budget_of_measured_work() -> None:
    for micros in range(1, 60_000, 7):
        p95 = micros / 1e6
        n = pack_size(p95, 3600)
        assert n == 1 or n * p95 <= 0.05 + 1e-12, p95
        assert 1 <= n <= DEFAULT_CAP


def test_budget_and_cap_are_the_callers() -> None:
    assert pack_size(0.001, 3600, budget=0.2) == 200
    assert pack_size(0.001, 3600, cap=8) == 8
