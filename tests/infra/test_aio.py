"""LoopRuntime.run: a coroutine handed from any thread to the process's loop, and back."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lewis_tasks.infra.aio import LoopRuntime


@pytest.fixture
def loop_runtime() -> Iterator[LoopRuntime]:
    runtime = LoopRuntime()
    try:
        yield runtime
    finally:
        runtime.close()


async def _double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def test_results_come_back_to_each_of_many_threads(loop_runtime: LoopRuntime) -> None:
    got: dict[int, list[int]] = {}

    def worker(n: int) -> None:
        got[n] = [loop_runtime.run(_double(n * 100 + i)) for i in range(20)]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == {n: [2 * (n * 100 + i) for i in range(20)] for n in range(50)}


def test_the_coroutines_own_error_is_raised(loop_runtime: LoopRuntime) -> None:
    async def fail() -> None:
        await asyncio.sleep(0)
        raise LookupError("no such port")

    with pytest.raises(LookupError, match="no such port"):
        loop_runtime.run(fail())


def test_a_timeout_raises_and_ends_the_coroutine_on_the_loop(loop_runtime: LoopRuntime) -> None:
    ended = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.set()

    with pytest.raises(TimeoutError):
        loop_runtime.run(forever(), timeout=0.05)
    assert ended.wait(5)  # cancelled on the loop, not left running there


def test_a_task_cancelled_on_the_loop_raises_cancelled_error(loop_runtime: LoopRuntime) -> None:
    async def cancelled_soon() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_soon(task.cancel)
        await asyncio.sleep(3600)

    with pytest.raises(concurrent.futures.CancelledError):
        loop_runtime.run(cancelled_soon())


def test_what_is_no_coroutine_is_refused_at_once(loop_runtime: LoopRuntime) -> None:
    with pytest.raises(TypeError, match="coroutine"):
        loop_runtime.run(_double)  # type: ignore[arg-type]
    assert loop_runtime.run(_double(4)) == 8  # the loop goes on


def test_a_failure_to_start_the_task_wakes_the_caller(
    loop_runtime: LoopRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(coro: Any, **_: Any) -> Any:
        raise RuntimeError("the loop refuses new tasks")

    monkeypatch.setattr(loop_runtime.loop, "create_task", refuse)
    with pytest.raises(RuntimeError, match="refuses new tasks"):
        loop_runtime.run(_double(1), timeout=5)
