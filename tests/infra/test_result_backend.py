"""The one-round-trip result store keeps Celery's rule: a SUCCESS is never overwritten."""

from __future__ import annotations

from typing import Any

from celery import states


def test_success_is_final_and_other_states_update(celery_app: Any, worker_redis: Any) -> None:
    backend = celery_app.backend
    assert type(backend).__name__ == "LewisRedisBackend"
    backend.store_result("rb-1", None, states.STARTED)
    assert backend.get_task_meta("rb-1", cache=False)["status"] == states.STARTED
    backend.store_result("rb-1", {"answer": 42}, states.SUCCESS)
    # a late duplicate (a redelivered copy that failed) must not replace the success
    backend.store_result("rb-1", ValueError("late duplicate"), states.FAILURE)
    meta = backend.get_task_meta("rb-1", cache=False)
    assert meta["status"] == states.SUCCESS and meta["result"] == {"answer": 42}
    assert 0 < worker_redis.ttl(backend.get_key_for_task("rb-1")) <= celery_app.conf.result_expires


def test_store_publishes_to_waiting_consumers(celery_app: Any) -> None:
    from celery.result import AsyncResult

    backend = celery_app.backend
    result = AsyncResult("rb-2", app=celery_app)
    backend.on_task_call(None, "rb-2")  # subscribe first, as submit() does
    backend.store_result("rb-2", [1, 2, 3], states.SUCCESS)
    assert result.get(timeout=5) == [1, 2, 3]
