"""The worker runtime: one object per process holds the clients, engines, cache and loop; a
forked child gets its own, and a closed one is rebuilt on the next use."""

from __future__ import annotations

import multiprocessing
from typing import Any

from lewis_tasks.infra.cache import get_cache
from lewis_tasks.infra.database import get_engine
from lewis_tasks.infra.redis_client import get_redis
from lewis_tasks.infra.runtime import close_runtime, runtime, start_runtime


def test_the_process_resources_are_the_runtimes(lewis_settings: Any) -> None:
    # Given this process's runtime
    rt = runtime()
    # Then the module accessors hand out what it holds, once each
    assert get_redis() is rt.redis() is get_redis()
    assert get_engine() is rt.engine(lewis_settings.database, _made_twice)
    assert get_cache() is rt.cache
    assert rt.run(_answer()) == 42 and rt.loop_runtime.thread.is_alive()


def _made_twice(*_: Any) -> Any:
    raise AssertionError("the engine was made a second time")


async def _answer() -> int:
    return 42


def test_closing_the_runtime_stops_its_loop_and_the_next_use_builds_anew(
    lewis_settings: Any,
) -> None:
    # Given a runtime whose loop and Redis client are in use
    rt = runtime()
    client = get_redis()
    assert rt.run(_answer()) == 42
    loop = rt.loop_runtime
    # When it is closed
    close_runtime()
    # Then its loop thread has ended, and the next use gets a new runtime with new resources
    assert not loop.thread.is_alive()
    assert runtime() is not rt and get_redis() is not client
    assert get_redis().ping()


def test_a_worker_start_sets_the_role_that_sizes_the_engines(lewis_settings: Any) -> None:
    try:
        rt = start_runtime(role="io", hostname="rt@test")
        assert runtime() is rt and (rt.role, rt.hostname) == ("io", "rt@test")
    finally:
        close_runtime()
    assert runtime().role == "command"


def _child_report(queue: Any) -> None:
    rt = runtime()
    queue.put((id(rt), rt.pid, rt.role, rt.hostname, bool(get_redis().ping())))


def test_a_forked_child_gets_a_runtime_of_its_own_with_the_parents_role(
    lewis_settings: Any,
) -> None:
    # Given a parent worker runtime with a live Redis client
    parent = start_runtime(role="cpu", hostname="parent@test")
    try:
        client = get_redis()
        assert client.ping()
        # When a forked child asks for its runtime
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_report, args=(queue,))
        child.start()
        _, pid, role, hostname, pinged = queue.get(timeout=30)
        child.join(30)
        # Then it got its own (its pid), kept the role and name, and its own client works
        assert pid == child.pid != parent.pid
        assert (role, hostname, pinged) == ("cpu", "parent@test", True)
        # and the parent's runtime and client are untouched
        assert runtime() is parent and get_redis() is client and client.ping()
    finally:
        close_runtime()
