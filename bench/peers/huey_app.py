"""huey, as its docs run it: `RedisHuey`, `huey_consumer` with process workers for no-ops and
thread workers for waits (huey's advice for IO-bound tasks; greenlets would need gevent).

Results live in huey's one Redis hash (``huey.results.<name>``) in the broker's db, so
completion is counted with HLEN on it: O(1), as DBSIZE is for the others.
``store_none=True`` so a no-op's ``None`` is stored like every other system's result.
The round trip uses ``notify_result=True`` (huey 3's BLPOP wake-up) on both sides: huey's
fastest way to wait for one result; the other shapes keep huey's default (no notify list).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from huey import RedisHuey


def build(url: str, notify: bool = False) -> tuple[RedisHuey, dict[str, Any]]:
    """A huey instance on ``url`` and its bench tasks (named, so producer and consumer agree)."""
    huey = RedisHuey(
        "bench-notify" if notify else "bench", url=url, store_none=True, notify_result=notify
    )

    @huey.task(name="noop")
    def noop() -> None:
        return None

    @huey.task(name="sleep")
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @huey.task(name="pid")
    def pid(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    return huey, {"noop": noop, "sleep": sleep, "pid": pid}


# what `huey_consumer bench.peers.huey_app.huey` imports (the bench sets BENCH_BROKER_URL)
if "BENCH_BROKER_URL" in os.environ:
    huey, _tasks = build(os.environ["BENCH_BROKER_URL"])
    huey_notify, _notify_tasks = build(os.environ["BENCH_BROKER_URL"], notify=True)


def worker_argvs(kind: str) -> tuple[list[list[str]], int]:
    """(command lines, worker processes expected) for 'latency', 'noop' or 'sleep'."""
    consumer = [sys.executable, "-m", "huey.bin.huey_consumer", "-q", "-n"]
    if kind == "sleep":  # 2 consumers x 100 threads: 200 waits in flight, as the others
        return [
            [*consumer, "bench.peers.huey_app.huey", "-k", "thread", "-w", "100"] for _ in range(2)
        ], 2
    instance = "huey_notify" if kind == "latency" else "huey"
    return [[*consumer, f"bench.peers.huey_app.{instance}", "-k", "process", "-w", "2"]], 2


class Client:
    """The producer side: what the bench does through huey's own API."""

    batched = None  # huey enqueues one task per call (`Task.map` loops over `enqueue`)

    def __init__(self, broker: str, results: str) -> None:
        del results  # huey keeps results in its own hash in the broker's db
        self.huey, self.tasks = build(broker)
        self.notify_huey, self.notify_tasks = build(broker, notify=True)

    def round_trips(self, samples: int, warmup: int) -> list[float]:
        noop = self.notify_tasks["noop"]
        for _ in range(warmup):
            noop().get(blocking=True, timeout=10)
        rtts = []
        for _ in range(samples):
            began = time.perf_counter()
            noop().get(blocking=True, timeout=10)
            rtts.append((time.perf_counter() - began) * 1000)
        return rtts

    def push(self, kind: str, count: int, seconds: float = 0.0) -> None:
        task = self.tasks[kind]
        args = () if kind == "noop" else (seconds,)
        for _ in range(count):
            task(*args)

    def push_single(self, count: int) -> None:
        self.push("noop", count)

    def push_batched(self, count: int) -> None:
        raise NotImplementedError

    def probe(self, kind: str, count: int, seconds: float) -> set[int]:
        tasks = self.notify_tasks if kind == "latency" else self.tasks  # the queue that runs
        handles = [tasks["pid"](seconds) for _ in range(count)]
        return {h.get(blocking=True, timeout=60) for h in handles}

    def finished(self) -> int:
        return int(self.huey.storage.result_store_size())

    def queued(self) -> int:
        return int(self.huey.storage.queue_size())

    def clear_results(self) -> None:
        self.huey.storage.flush_results()
        self.notify_huey.storage.flush_results()

    def close(self) -> None:
        self.huey.storage.pool.disconnect()
        self.notify_huey.storage.pool.disconnect()
