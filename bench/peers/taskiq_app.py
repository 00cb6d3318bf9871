"""taskiq, as its docs run it: taskiq-redis's `ListQueueBroker` (BRPOP on a list) with a
`RedisAsyncResultBackend`, `taskiq worker` with 2 processes, async tasks (the default 100
in flight per process: 200 waits at once, as the others).

Each result is its own key in the results-only db: completion is counted with DBSIZE there.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

QUEUE = "taskiq"
WORKER_ENV: dict[str, str] = {}
CONCURRENT_KICKS = 100  # kiq calls in flight at once when pushing many (asyncio.gather)
T = TypeVar("T")


def build(broker_url: str, results_url: str) -> tuple[ListQueueBroker, dict[str, Any]]:
    """A broker with results on ``results_url`` and its bench tasks."""
    broker = ListQueueBroker(broker_url, queue_name=QUEUE).with_result_backend(
        RedisAsyncResultBackend(results_url)
    )

    async def noop() -> None:
        return None

    async def sleep(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async def pid(seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    tasks = {
        fn.__name__: broker.register_task(fn, task_name=f"bench_{fn.__name__}")
        for fn in (noop, sleep, pid)
    }
    return broker, tasks


# what `taskiq worker bench.peers.taskiq_app:broker` imports (the bench sets BENCH_BROKER_URL)
if "BENCH_BROKER_URL" in os.environ:
    broker, _tasks = build(os.environ["BENCH_BROKER_URL"], os.environ["BENCH_BACKEND_URL"])


def worker_argvs(kind: str) -> tuple[list[list[str]], int]:
    """(command lines, worker processes expected) for 'latency', 'noop' or 'sleep'."""
    del kind  # one setup serves every shape: async tasks, 100 in flight per process
    return [
        [
            sys.executable,
            "-m",
            "taskiq",
            "worker",
            "bench.peers.taskiq_app:broker",
            "--workers",
            "2",
            "--log-level",
            "WARNING",
        ]
    ], 2


class Client:
    """The producer side: what the bench does through taskiq's own API, on one event loop."""

    batched = f"`kiq` calls {CONCURRENT_KICKS} at a time through `asyncio.gather`"

    def __init__(self, broker: str, results: str) -> None:
        self.broker, self.tasks = build(broker, results)
        # completion and queue length are read with a plain client, as for every system
        self.results_client = redis.Redis.from_url(results)
        self.broker_client = redis.Redis.from_url(broker)
        self.loop = asyncio.new_event_loop()
        self.run(self.broker.startup())

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def round_trips(self, samples: int, warmup: int) -> list[float]:
        async def measure() -> list[float]:
            noop = self.tasks["noop"]
            for _ in range(warmup):
                await (await noop.kiq()).wait_result(check_interval=0.0005, timeout=10)
            rtts = []
            for _ in range(samples):
                began = time.perf_counter()
                await (await noop.kiq()).wait_result(check_interval=0.0005, timeout=10)
                rtts.append((time.perf_counter() - began) * 1000)
            return rtts

        return self.run(measure())

    async def _gather(self, count: int, kick: Callable[[], Awaitable[Any]]) -> list[Any]:
        handles: list[Any] = []
        for start in range(0, count, CONCURRENT_KICKS):
            batch = min(CONCURRENT_KICKS, count - start)
            handles += await asyncio.gather(*(kick() for _ in range(batch)))
        return handles

    def push(self, kind: str, count: int, seconds: float = 0.0) -> None:
        task = self.tasks[kind]
        args = () if kind == "noop" else (seconds,)
        self.run(self._gather(count, lambda: task.kiq(*args)))

    def push_single(self, count: int) -> None:
        async def kick() -> None:
            for _ in range(count):
                await self.tasks["noop"].kiq()

        self.run(kick())

    def push_batched(self, count: int) -> None:
        self.push("noop", count)

    def probe(self, kind: str, count: int, seconds: float) -> set[int]:
        del kind  # one queue serves every shape

        async def ask() -> set[int]:
            handles = await self._gather(count, lambda: self.tasks["pid"].kiq(seconds))
            results = [await h.wait_result(check_interval=0.005, timeout=60) for h in handles]
            return {r.return_value for r in results}

        return self.run(ask())

    def finished(self) -> int:
        return int(self.results_client.dbsize())

    def queued(self) -> int:
        return int(self.broker_client.llen(QUEUE))

    def clear_results(self) -> None:
        self.results_client.flushdb()

    def close(self) -> None:
        self.run(self.broker.shutdown())
        self.results_client.close()
        self.broker_client.close()
        self.loop.close()
