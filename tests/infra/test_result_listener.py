"""Results by push on one connection per thread (issue 18.2's producer side), on a real
redis-server.

``submit`` writes the result's SUBSCRIBE and the task's LPUSH in one write, so the wait is a
read of the socket and never a GET; anything else is awaited by SUBSCRIBE then GET. A store
here is what the result backend's script does: SET the key, PUBLISH it on its own channel.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from lewis_tasks.infra import result_listener
from lewis_tasks.infra.redis_server import EmbeddedRedis
from lewis_tasks.infra.result_listener import ResultListener, channel, same_server
from tests.support.procs import lewis_process, logs_on_failure, wait_for


def _db(server: EmbeddedRedis, db: int) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{db}"


def _calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def _store(client: redis.Redis, task_id: str, status: str = "SUCCESS", publish: bool = True) -> str:
    meta = json.dumps({"status": status, "result": task_id, "task_id": task_id})
    client.set(channel(task_id), meta)
    if publish:
        client.publish(channel(task_id), meta)
    return meta


def _subscribers(client: redis.Redis, task_id: str) -> int:
    return int(dict(client.pubsub_numsub(channel(task_id)))[channel(task_id)])


def _worker_env_and_app(server: EmbeddedRedis, tmp_path: Path) -> tuple[dict[str, str], Celery]:
    """An io worker's environment (results on db 1, no reporting) and a producer app for it."""
    from lewis_tasks.infra.celery_app import configure_app
    from lewis_tasks.infra.config import load_settings

    env = {
        "LEWIS_BROKER_URL": server.url,
        "LEWIS_BROKER_RESULT_BACKEND": _db(server, 1),
        "LEWIS_STACK_HOME": str(tmp_path / "home"),
        "LEWIS_MONITORING_REPORTING": "false",
    }
    return env, configure_app(Celery("listener-producer"), load_settings(env=env))


@pytest.mark.parametrize("results_db", [0, 1])
def test_a_pushed_task_is_subscribed_before_it_exists_and_awaited_without_a_read(
    server: EmbeddedRedis, results_db: int
) -> None:
    broker = redis.Redis.from_url(server.url)
    results = redis.Redis.from_url(_db(server, results_db))
    listener = ResultListener(_db(server, results_db), server.url)
    assert listener.pushes  # one server: one connection sends and listens
    subscribed_when_taken: list[int] = []

    def worker() -> None:  # takes the task, then stores its result as the backend does
        _key, body = broker.brpop(["io"], timeout=10) or (b"", b"")
        subscribed_when_taken.append(_subscribers(broker, json.loads(body)["id"]))
        _store(results, json.loads(body)["id"])

    gets = _calls(broker, "get")
    for task_id in ("t1", "t2"):
        thread = threading.Thread(target=worker)
        thread.start()
        listener.push("io", json.dumps({"id": task_id}), task_id)
        meta = listener.wait(task_id, timeout=10, interval=30)
        thread.join()
        assert meta is not None and meta["result"] == task_id
    # Then each task's subscription was there the moment a worker could take it, and no
    # wait read the key
    assert subscribed_when_taken == [1, 1]
    assert _calls(broker, "get") == gets
    # And the first one's channel was let go with the next write
    assert _subscribers(broker, "t1") == 0
    assert broker.llen("io") == 0
    broker.close()
    results.close()


def test_a_read_of_another_db_leaves_the_connection_on_the_brokers(server: EmbeddedRedis) -> None:
    broker = redis.Redis.from_url(server.url)
    results = redis.Redis.from_url(_db(server, 1))
    listener = ResultListener(_db(server, 1), server.url)
    listener.push("io", "m1", "t1")
    _store(results, "t1", publish=False)  # a push lost: only the read after `interval` sees it
    meta = listener.wait("t1", timeout=10, interval=0.05)
    assert meta is not None and meta["result"] == "t1"
    listener.push("io", "m2", "t2")  # the next push still lands on the broker's db
    assert broker.lrange("io", 0, -1) == [b"m2", b"m1"]
    assert not results.exists("io")
    broker.close()
    results.close()


def test_a_task_sent_another_way_is_subscribed_then_read(server: EmbeddedRedis) -> None:
    results = redis.Redis.from_url(server.url)
    listener = ResultListener(server.url)  # no broker: e.g. submit_many's tasks, the CLI's jobs
    assert not listener.pushes
    _store(results, "early", publish=False)
    assert (listener.wait("early", timeout=5) or {}).get("result") == "early"
    assert listener.wait("late", timeout=0.05) is None  # subscribed, nothing stored yet
    timer = threading.Timer(0.2, _store, (results, "late", "FAILURE"))
    timer.start()
    meta = listener.wait("late", timeout=10, interval=30)  # by push: long before a re-read
    timer.join()
    assert meta is not None and meta["status"] == "FAILURE"
    results.close()


def test_results_of_tasks_not_yet_awaited_are_kept_and_let_go(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    listener = ResultListener(server.url, server.url)
    for task_id in ("t1", "t2"):
        listener.push("io", "m", task_id)
    _store(client, "t1")
    _store(client, "t2")
    gets = _calls(client, "get")
    assert (listener.wait("t2", timeout=5, interval=30) or {}).get("result") == "t2"
    assert (listener.wait("t1", timeout=0.01, interval=30) or {}).get("result") == "t1"
    assert _calls(client, "get") == gets  # t1's push was read while waiting for t2's, and kept
    listener.push("io", "m", "t3")  # the next write lets both channels go
    assert _subscribers(client, "t1") == _subscribers(client, "t2") == 0
    client.close()


def test_what_is_not_a_stored_state_on_the_channel_is_ignored(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    listener = ResultListener(server.url, server.url)
    listener.push("io", "m", "t1")
    for junk in ("not json", '{"__type__": "uuid", "__value__": "x"}', '{"status": "STARTED"}'):
        client.publish(channel("t1"), junk)
    _store(client, "t1")
    assert (listener.wait("t1", timeout=10, interval=30) or {}).get("result") == "t1"
    client.close()


def test_a_result_no_longer_kept_is_read_again(
    server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(result_listener, "KEEP", 1)
    client = redis.Redis.from_url(server.url)
    listener = ResultListener(server.url, server.url)
    for task_id in ("t1", "t2"):
        listener.push("io", "m", task_id)
        _store(client, task_id)
    assert (listener.wait("t2", timeout=5, interval=30) or {}).get("result") == "t2"
    gets = _calls(client, "get")
    assert (listener.wait("t1", timeout=5, interval=30) or {}).get("result") == "t1"
    assert _calls(client, "get") == gets + 1  # t1's was forgotten (KEEP 1): read from the store
    client.close()


def test_a_dropped_connection_loses_no_result(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    listener = ResultListener(server.url, server.url)
    listener.push("io", "m", "t1")
    assert client.client_kill_filter(_type="pubsub") == 1  # the listener's connection
    _store(client, "t1")  # published to nobody
    meta = listener.wait("t1", timeout=10, interval=30)  # long before a re-read would come
    assert meta is not None and meta["result"] == "t1"
    listener.push("io", "m", "t2")  # and it sends again on a fresh connection
    assert client.llen("io") == 2
    client.close()


def test_a_connection_closed_while_idle_is_replaced_before_sending(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    listener = ResultListener(server.url, server.url)
    listener.push("io", "m1", "t1")
    assert client.client_kill_filter(_type="pubsub") == 1  # as a Redis restart would
    listener.push("io", "m2", "t2")  # nothing was sent on the dead one: sent once, anew
    assert client.lrange("io", 0, -1) == [b"m2", b"m1"]
    _store(client, "t2")
    assert (listener.wait("t2", timeout=10, interval=30) or {}).get("result") == "t2"
    client.close()


def test_a_forked_child_waits_on_its_own_connection(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    listener = ResultListener(server.url, server.url)
    listener.push("io", "m", "t1")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child waits for the parent's task; it must not read the parent's socket
        meta = listener.wait("t1", timeout=10, interval=30)
        os.write(write, b"got" if meta and meta["result"] == "t1" else b"none")
        os._exit(0)
    os.close(write)
    wait_for(lambda: _subscribers(client, "t1") == 2, timeout=10, what="the child's subscription")
    _store(client, "t1")
    assert os.read(read, 8) == b"got"
    os.waitpid(pid, 0)
    os.close(read)
    meta = listener.wait("t1", timeout=5, interval=30)  # the push reached the parent too
    assert meta is not None and meta["result"] == "t1"
    client.close()


def test_each_thread_has_its_own_listener_and_any_thread_may_wait(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    mine = result_listener.listener(server.url, server.url)
    assert result_listener.listener(server.url, server.url) is mine
    theirs: list[Any] = []

    def other_thread() -> None:
        found = result_listener.listener(server.url, server.url)
        theirs.append(found)
        theirs.append(found.wait("t1", timeout=10, interval=30))

    mine.push("io", "m", "t1")  # sent from this thread, awaited in another
    thread = threading.Thread(target=other_thread)
    thread.start()
    wait_for(lambda: _subscribers(client, "t1") == 2, timeout=10, what="the thread's subscription")
    _store(client, "t1")
    thread.join()
    assert theirs[0] is not mine and theirs[1]["result"] == "t1"
    client.close()


def test_a_refused_subscription_sends_the_task_once_and_says_why_it_cannot_wait(
    server: EmbeddedRedis,
) -> None:
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser(  # a producer that may use every key and command, but no channel
        "producer",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        commands=["+@all"],
        reset_channels=True,
    )
    url = server.url.replace("redis://", "redis://producer:pw@")
    listener = ResultListener(url, url)
    listener.push("io", "m1", "t1")
    listener.push("io", "m2", "t2")  # replies still in step: each LPUSH answered as its own
    assert admin.lrange("io", 0, -1) == [b"m2", b"m1"]
    with pytest.raises(redis.ResponseError, match="(?i)permission"):
        listener.wait("t1", timeout=5)
    listener.push("io", "m3", "t3")  # a fresh connection after the error
    assert admin.llen("io") == 3
    admin.close()


def test_same_server_is_host_port_and_user_whatever_the_db() -> None:
    assert same_server("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/5")
    assert not same_server("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0")
    assert not same_server("redis://a:x@127.0.0.1:6379/0", "redis://b:x@127.0.0.1:6379/0")
    assert not same_server("redis://127.0.0.1:6379/0", "unix:///tmp/redis.sock")
    assert not same_server("redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6379/0")


def test_a_real_io_worker_round_trip_reads_no_key(server: EmbeddedRedis, tmp_path: Path) -> None:
    """``submit`` then ``wait`` against ``lewis worker io``: every result by push, one
    SUBSCRIBE per task and no read of the key by the producer (Celery's wait reads it before
    every wait)."""
    from lewis_tasks.producer import submit

    count = 40
    client = redis.Redis.from_url(server.url)
    env, app = _worker_env_and_app(server, tmp_path)
    log = tmp_path / "worker.log"
    with logs_on_failure(tmp_path), lewis_process(["worker", "io"], env, log):
        wait_for(lambda: "ready" in log.read_text(), timeout=60, what="the io worker")
        submit("lewis.bench.io_noop", app=app, queue="io").wait(timeout=30)  # connected
        gets, subscribes = _calls(client, "get"), _calls(client, "subscribe")
        for _ in range(count):
            assert submit("lewis.bench.io_noop", app=app, queue="io").wait(timeout=30) is None
        assert _calls(client, "subscribe") - subscribes == count
        # the store's script reads the key once per task (Celery's wait: once more each)
        assert _calls(client, "get") - gets < count * 5 // 4
    client.close()


def test_threads_sending_and_waiting_at_once_each_get_their_own_results(
    server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Four threads against a real io worker, each sending and awaiting tasks whose results
    differ (io_sleep returns its argument), and each also awaiting a neighbour's handle: every
    wait returns its own task's result."""
    from lewis_tasks.producer import submit

    env, app = _worker_env_and_app(server, tmp_path)
    handed: list[Any] = [None] * 4
    wrong: list[Any] = []

    def producer(t: int) -> None:
        for i in range(25):
            value = round(t * 0.001 + i * 0.00001, 6)
            got = submit("lewis.bench.io_sleep", args=[value], app=app).wait(timeout=30)
            if got != value:
                wrong.append((t, i, value, got))
        handed[t] = submit("lewis.bench.io_sleep", args=[t + 0.5], app=app)

    log = tmp_path / "worker.log"
    with logs_on_failure(tmp_path), lewis_process(["worker", "io"], env, log):
        wait_for(lambda: "ready" in log.read_text(), timeout=60, what="the io worker")
        threads = [threading.Thread(target=producer, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert wrong == []
        # each thread's last handle, awaited from here: another thread than its sender
        assert [h.wait(timeout=30) for h in handed] == [0.5, 1.5, 2.5, 3.5]


def test_a_handles_wait_raises_the_stored_error_or_says_how_the_task_ended(
    server: EmbeddedRedis, tmp_path: Path
) -> None:
    from celery.exceptions import TimeoutError as ResultTimeout

    from lewis_tasks.errors import LewisError
    from lewis_tasks.infra.celery_app import configure_app
    from lewis_tasks.infra.config import load_settings
    from lewis_tasks.producer.base import TaskHandle

    env = {"LEWIS_BROKER_URL": server.url, "LEWIS_STACK_HOME": str(tmp_path)}
    app = configure_app(Celery("listener-errors"), load_settings(env=env))
    client = redis.Redis.from_url(server.url)
    error = {"exc_type": "ValueError", "exc_message": ["bad"], "exc_module": "builtins"}
    client.set(channel("failed"), json.dumps({"status": "FAILURE", "result": error}))
    client.set(channel("revoked"), json.dumps({"status": "REVOKED", "result": None}))
    with pytest.raises(ValueError, match="bad"):
        TaskHandle("failed", "t", app).wait(timeout=5)
    with pytest.raises(LewisError, match="revoked ended REVOKED"):
        TaskHandle("revoked", "t", app).wait(timeout=5)
    with pytest.raises(ResultTimeout):
        TaskHandle("never", "t", app).wait(timeout=0.1)
    client.close()
