"""dramatiq, as its docs run it: `RedisBroker` with the default middleware plus `Results` on a
`RedisBackend` (round trips need it), the `dramatiq` CLI with 2 processes.

Threads: dramatiq's default 8 per process for no-ops, 100 per process for the 50 ms waits
(200 in flight, as the others). ``dramatiq_worker_timeout=100`` (ms): an idle consumer backs
off up to this long between fetches (default 1,000), so a drain that starts into idle workers
does not wait up to a second first. Each result is its own key in the results-only db:
completion is counted with DBSIZE there.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

QUEUE = "default"
WORKER_ENV = {"dramatiq_worker_timeout": "100"}


def build(broker_url: str, results_url: str) -> tuple[RedisBroker, dict[str, Any]]:
    """A broker with results on ``results_url`` and its bench actors."""
    broker = RedisBroker(url=broker_url)
    broker.add_middleware(Results(backend=RedisBackend(url=results_url)))

    def noop() -> None:
        return None

    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def pid(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    def declare(fn: Callable[..., Any]) -> Any:
        return dramatiq.actor(
            actor_name=f"bench_{fn.__name__}",
            broker=broker,
            queue_name=QUEUE,
            store_results=True,
            max_retries=0,
        )(fn)

    actors = {fn.__name__: declare(fn) for fn in (noop, sleep, pid)}
    return broker, actors


# what `dramatiq bench.peers.dramatiq_app` imports (the bench sets BENCH_BROKER_URL)
if "BENCH_BROKER_URL" in os.environ:
    broker, _actors = build(os.environ["BENCH_BROKER_URL"], os.environ["BENCH_BACKEND_URL"])
    dramatiq.set_broker(broker)


def worker_argvs(kind: str) -> tuple[list[list[str]], int]:
    """(command lines, worker processes expected) for 'latency', 'noop' or 'sleep'."""
    threads = "100" if kind == "sleep" else "8"
    return [
        [
            sys.executable,
            "-m",
            "dramatiq",
            "bench.peers.dramatiq_app",
            "--processes",
            "2",
            "--threads",
            threads,
        ]
    ], 2


class Client:
    """The producer side: what the bench does through dramatiq's own API."""

    batched = None  # dramatiq sends one message per call (`group.run` loops over `send`)

    def __init__(self, broker: str, results: str) -> None:
        self.broker, self.actors = build(broker, results)
        self.backend = next(m.backend for m in self.broker.middleware if isinstance(m, Results))

    def round_trips(self, samples: int, warmup: int) -> list[float]:
        noop = self.actors["noop"]
        for _ in range(warmup):
            noop.send().get_result(backend=self.backend, block=True, timeout=10_000)
        rtts = []
        for _ in range(samples):
            began = time.perf_counter()
            noop.send().get_result(
                backend=self.backend, block=True, timeout=10_000
            )  # BRPOPLPUSH on the result key
            rtts.append((time.perf_counter() - began) * 1000)
        return rtts

    def push(self, kind: str, count: int, seconds: float = 0.0) -> None:
        actor = self.actors[kind]
        args = () if kind == "noop" else (seconds,)
        for _ in range(count):
            actor.send(*args)

    def push_single(self, count: int) -> None:
        self.push("noop", count)

    def push_batched(self, count: int) -> None:
        raise NotImplementedError

    def probe(self, kind: str, count: int, seconds: float) -> set[int]:
        del kind  # one queue serves every shape
        messages = [self.actors["pid"].send(seconds) for _ in range(count)]
        return {m.get_result(backend=self.backend, block=True, timeout=60_000) for m in messages}

    def finished(self) -> int:
        return int(self.backend.client.dbsize())

    def queued(self) -> int:
        return int(self.broker.client.llen(f"dramatiq:{QUEUE}"))

    def clear_results(self) -> None:
        self.backend.client.flushdb()

    def close(self) -> None:
        self.broker.close()
