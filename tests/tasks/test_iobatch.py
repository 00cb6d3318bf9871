"""Packed io calls: one message, many independent tasks, each with its own result."""

from __future__ import annotations

from typing import Any

import pytest

from lewis_tasks.errors import InvalidInput
from lewis_tasks.producer import submit_many


def test_packed_calls_each_get_their_own_result(celery_worker: Any) -> None:
    # Given 120 waits packed 50 to a message (3 messages)
    handles = submit_many(
        "lewis.bench.io_sleep", [((0.001 * (i % 5),), {}) for i in range(120)], pack=50
    )
    # Then each call's handle has its own answer
    assert len({h.id for h in handles}) == 120
    assert [h.wait(timeout=30) for h in handles] == [0.001 * (i % 5) for i in range(120)]


def test_a_bad_call_fails_alone_and_its_neighbours_succeed(celery_worker: Any) -> None:
    calls = [((0.001,), {}), ((-1,), {}), ((0.002,), {})]
    first, bad, third = submit_many("lewis.bench.io_sleep", calls, pack=3)
    assert first.wait(timeout=30) == 0.001 and third.wait(timeout=30) == 0.002
    with pytest.raises(InvalidInput, match="seconds must be a number"):
        bad.wait(timeout=30)


def test_a_task_that_cannot_be_packed_fails_every_call_readably(celery_worker: Any) -> None:
    handles = submit_many("lewis.bench.noop", [((), {})] * 3, pack=3, queue="io")
    for handle in handles:  # answered, not left waiting forever
        with pytest.raises(InvalidInput, match="cannot run packed"):
            handle.wait(timeout=30)


def test_pack_bounds_are_checked_before_sending(lewis_settings: Any) -> None:
    with pytest.raises(InvalidInput, match="pack within 1..1000"):
        submit_many("lewis.bench.io_sleep", [((0,), {})], pack=5000)
