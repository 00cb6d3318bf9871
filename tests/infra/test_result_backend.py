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


def test_a_packs_successes_are_stored_together_as_one_by_one(
    celery_app: Any, worker_redis: Any
) -> None:
    import time

    backend = celery_app.backend
    base = f"rb-many-{time.monotonic_ns()}"
    ids = [f"{base}-{i}" for i in range(5)]
    # Given one of them already ended in success (a redelivered pack's first run)
    backend.store_result(ids[0], "first run", states.SUCCESS)
    subscriber = worker_redis.pubsub()
    subscriber.subscribe(backend.get_key_for_task(ids[1]))
    assert subscriber.get_message(timeout=2)["type"] == "subscribe"
    # When a pack's successes are stored, one of them too large for Redis
    huge = "x" * (backend._MAX_STR_VALUE_SIZE + 1)
    refused = backend.store_successes(
        [(ids[0], "second run"), (ids[1], {"n": 1}), (ids[2], [2]), (ids[3], None), (ids[4], huge)]
    )
    # Then each is stored as store_result would have (state, result, its expiry) and published
    # to whoever waits; the first success stands; the one too large is handed back, not stored
    metas = [backend.get_task_meta(i, cache=False) for i in ids]
    assert [m["status"] for m in metas[:4]] == [states.SUCCESS] * 4
    assert [m["result"] for m in metas[:4]] == ["first run", {"n": 1}, [2], None]
    assert all(m["task_id"] == i for m, i in zip(metas[:4], ids, strict=False))
    for task_id in ids[1:4]:
        ttl = worker_redis.ttl(backend.get_key_for_task(task_id))
        assert 0 < ttl <= celery_app.conf.result_expires
    pushed = subscriber.get_message(timeout=2)
    assert pushed is not None and b'"n": 1' in pushed["data"]
    subscriber.close()
    assert [task_id for task_id, _ in refused] == [ids[4]]
    assert "too large" in str(refused[0][1])
    assert worker_redis.get(backend.get_key_for_task(ids[4])) is None


def test_a_thread_whose_connection_died_or_whose_script_was_flushed_still_stores(
    celery_app: Any, worker_redis: Any
) -> None:
    # Given a result stored on this thread's own connection to the results' Redis
    backend = celery_app.backend
    backend.store_result("rb-held-1", 1, states.SUCCESS)
    held = backend._held.conn
    assert held is not None
    # When the server drops that connection (a restart, a timeout, CLIENT KILL)
    host, port = held._sock.getsockname()[:2]
    worker_redis.client_kill(f"{host}:{port}")
    backend.store_result("rb-held-2", 2, states.SUCCESS)
    # Then the next store connects afresh and lands; the dead connection is not kept
    assert backend._held.conn is not held
    # And when the server forgets the script (SCRIPT FLUSH, or a restart without it)
    worker_redis.script_flush()
    backend.store_result("rb-held-3", 3, states.SUCCESS)
    for n in (1, 2, 3):
        meta = backend.get_task_meta(f"rb-held-{n}", cache=False)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, n)


def test_each_thread_stores_on_a_connection_of_its_own(celery_app: Any) -> None:
    import threading

    backend = celery_app.backend
    conns: dict[int, Any] = {}

    def store(n: int) -> None:
        backend.store_result(f"rb-thread-{n}", n, states.SUCCESS)
        conns[n] = backend._held.conn

    threads = [threading.Thread(target=store, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # a connection is never shared by two threads (its replies would cross)
    assert len({id(c) for c in conns.values()}) == 4
    assert [backend.get_task_meta(f"rb-thread-{n}", cache=False)["result"] for n in range(4)] == [
        0,
        1,
        2,
        3,
    ]
