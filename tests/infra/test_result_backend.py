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


def test_a_store_whose_connection_died_or_whose_script_was_flushed_still_lands(
    celery_app: Any, worker_redis: Any
) -> None:
    # Given a result stored on a spare connection to the results' Redis (kept for the next)
    backend = celery_app.backend
    backend.store_result("rb-held-1", 1, states.SUCCESS)
    spares = list(backend._spare._free)
    assert spares
    # When the server drops those connections (a restart, a timeout, CLIENT KILL)
    for conn in spares:
        host, port = conn._sock.getsockname()[:2]
        worker_redis.client_kill(f"{host}:{port}")
    backend.store_result("rb-held-2", 2, states.SUCCESS)
    # Then the next store lands on a fresh connection; the dead one is not kept
    assert not {id(c) for c in spares} & {id(c) for c in backend._spare._free}
    # And when the server forgets the script (SCRIPT FLUSH, or a restart without it)
    worker_redis.script_flush()
    backend.store_result("rb-held-3", 3, states.SUCCESS)
    for n in (1, 2, 3):
        meta = backend.get_task_meta(f"rb-held-{n}", cache=False)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, n)


def test_threads_storing_at_once_never_share_a_connection(celery_app: Any) -> None:
    import threading
    import time

    backend = celery_app.backend
    made: list[Any] = []
    overlaps: list[int] = []
    make = backend._spare._make

    def watched() -> Any:  # a connection that notes a command sent by another thread while
        conn = make()  # one is in flight
        send, read = conn.send_command, conn.read_response
        owner: list[int] = []

        def send_command(*args: Any, **kwargs: Any) -> Any:
            me = threading.get_ident()
            if owner and owner[0] != me:
                overlaps.append(me)
            owner[:] = [me]
            return send(*args, **kwargs)

        def read_response(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.001)  # the reply is slow to come: other threads run meanwhile
            try:
                return read(*args, **kwargs)
            finally:
                owner.clear()

        conn.send_command, conn.read_response = send_command, read_response
        made.append(conn)
        return conn

    backend._spare._make = watched
    start = threading.Barrier(8)

    def store(t: int) -> None:
        start.wait()
        for n in range(40):
            backend.store_result(f"rb-thread-{t}-{n}", [t, n], states.SUCCESS)

    try:
        threads = [threading.Thread(target=store, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        backend._spare._make = make
    # every store landed whole (two threads on one connection would cross their bytes and
    # replies), on no more connections than threads, each of them spare again
    for t in range(8):
        for n in range(40):
            meta = backend.get_task_meta(f"rb-thread-{t}-{n}", cache=False)
            assert (meta["status"], meta["result"]) == (states.SUCCESS, [t, n])
    assert not overlaps
    assert 1 <= len(made) <= 8
    assert {id(c) for c in made} <= {id(c) for c in backend._spare._free}


def test_a_backend_let_go_closes_its_spare_connections(celery_app: Any) -> None:
    import gc

    from lewis_tasks.infra.result_backend import LewisRedisBackend

    # Given a second backend on the same store, which stored a result (one spare connection)
    backend = LewisRedisBackend(app=celery_app, url=celery_app.backend.url)
    backend.store_result("rb-let-go", 1, states.SUCCESS)
    spares = list(backend._spare._free)
    assert spares and all(c._sock is not None for c in spares)
    # When nothing holds it any more
    del backend
    gc.collect()
    # Then its connections are closed, not left open for the GC to find
    assert all(c._sock is None for c in spares)
