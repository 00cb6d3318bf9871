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


def test_default_pack_is_one_unless_packable_on_io_and_measured(
    lewis_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lewis_tasks.infra import metrics_store
    from lewis_tasks.producer.base import default_pack

    # Given a packable io task measured at 1 ms a call
    monkeypatch.setattr(
        metrics_store, "recent_runtime_p95", lambda name, window="5m", broker_url=None: 0.001
    )
    # Then 50 calls fill a message's 50 ms of work
    assert default_pack("lewis.bench.io_sleep", "io") == 50
    # and a task that cannot be packed, or sent to another queue, travels one to a message
    assert default_pack("lewis.bench.noop", "cpu") == 1
    assert default_pack("lewis.bench.noop", "io") == 1
    assert default_pack("lewis.bench.io_sleep", "cpu") == 1
    # and so does a packable task never measured
    monkeypatch.setattr(
        metrics_store, "recent_runtime_p95", lambda name, window="5m", broker_url=None: None
    )
    assert default_pack("lewis.bench.io_sleep", "io") == 1


def test_packed_calls_report_their_own_runtime_and_size_the_next_packs(
    celery_worker: Any, lewis_settings: Any
) -> None:
    from lewis_tasks.domain.packing import pack_size
    from lewis_tasks.errors import InvalidInput as NoMetric
    from lewis_tasks.infra import reporter as module
    from lewis_tasks.infra.metrics_store import recent_runtime_p95, store_from_settings
    from lewis_tasks.producer import wait_all
    from lewis_tasks.producer.base import default_pack

    name = "lewis.bench.io_noop"

    def runs() -> int:
        try:
            return store_from_settings().stats("celery_task_runtime", "5m", {"name": name}).count
        except NoMetric:  # no runtime reported yet in this store
            return 0

    mine = module.install("pack@test", system=False, start=False)
    try:
        before = runs()
        # Given 40 no-ops run packed 20 to a message
        assert wait_all(submit_many(name, [((), {})] * 40, pack=20), timeout=30) == [None] * 40
        # Then each call's runtime is reported under its own name, not only the envelope's
        assert mine.flush()
        assert runs() - before >= 40
        # and the default packs the next calls by that measurement: many to a message
        n = default_pack(name, "io")
        p95 = recent_runtime_p95(name)
        assert n == pack_size(p95, lewis_settings.broker.visibility_timeout) and n > 1
        # and every call of a default submit still gets its own stored result
        handles = submit_many(name, [((), {})] * (2 * n + 3))
        assert len({h.id for h in handles}) == 2 * n + 3
        assert wait_all(handles, timeout=60) == [None] * (2 * n + 3)
    finally:
        module.uninstall()


def test_a_call_failing_transiently_in_a_pack_is_retried_alone_under_its_id(
    celery_worker: Any,
) -> None:
    import uuid

    from lewis_tasks.errors import TransientError
    from lewis_tasks.producer.base import TaskHandle
    from lewis_tasks.tasks.iobatch import _settle_failure

    # Given a packed call of a wait that failed with a passing error
    task_id = str(uuid.uuid4())
    call = [task_id, [0.001], {}]
    outcome = _settle_failure("lewis.bench.io_sleep", call, TransientError("connection reset"))
    # Then it left the pack: sent again alone under its own id, its handle gets the result
    assert outcome == "retried"
    assert TaskHandle(task_id, "lewis.bench.io_sleep", None).wait(timeout=30) == 0.001
    # while a failure that is no passing error is stored as the call's failure at once
    other = str(uuid.uuid4())
    bad = _settle_failure("lewis.bench.io_sleep", [other, [-1], {}], InvalidInput("bad"))
    assert bad == "failed"
    with pytest.raises(InvalidInput, match="bad"):
        TaskHandle(other, "lewis.bench.io_sleep", None).wait(timeout=30)


def test_a_packed_result_too_large_to_store_fails_alone(
    lewis_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from celery.result import AsyncResult

    from lewis_tasks.infra.celery_app import app
    from lewis_tasks.tasks import iobatch

    # Given a packable body whose second call returns more than Redis may store
    huge = "x" * (app.backend._MAX_STR_VALUE_SIZE + 1)
    monkeypatch.setitem(iobatch.SYNC_BODIES, "lewis.bench.io_noop", lambda n: huge if n == 1 else n)
    base = f"pack-large-{time.monotonic_ns()}"
    calls = [[f"{base}-{i}", [i], {}] for i in range(3)]
    # When the pack runs (the worker's step, in this process)
    counts = iobatch.run_batch.run("lewis.bench.io_noop", calls)
    # Then its neighbours' results are stored together, and it fails alone, saying why
    assert counts == {"calls": 3, "ok": 2, "failed": 1, "retried": 0}
    results = [AsyncResult(f"{base}-{i}", app=app) for i in range(3)]
    assert [results[0].get(timeout=5), results[2].get(timeout=5)] == [0, 2]
    assert results[1].state == "FAILURE" and "too large" in str(results[1].result)
