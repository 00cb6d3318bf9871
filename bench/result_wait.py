"""The producer's side of a round trip (issue 18.2): results by push on the thread's own
connection, against Celery's wait.

    python -m bench.result_wait          # 5 runs of each side, interleaved (AB BA …), medians
    python -m bench.result_wait -r 7

One ``lewis worker io`` as shipped on a private Redis (results on another db of it, as the
platform suite has them); sequential no-op round trips, 400 a run, from one producer:

* *listener* (as shipped): ``submit`` writes the result's SUBSCRIBE and the LPUSH in one write
  on the thread's result connection, ``TaskHandle.wait`` reads the push
  (``lewis_tasks/infra/result_listener.py``);
* *celery_wait* (the path before): the same message pushed after Celery's result consumer
  subscribed (``backend.on_task_call``), then Celery's ``AsyncResult.get``, which reads the
  key before it waits and unsubscribes after.

Both wait with the default ``interval`` (a re-read after 1 s without the push). Measures the
round trip's p50 / p99 and the producer's CPU per round trip (``time.process_time``): on two
cores the producer's CPU is taken from the worker and Redis. Writes
``bench/results/result_wait.json``; BENCHMARKS.md's issue 18.2 section quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from lewis_tasks.infra.messages import message_origin, push_messages, queue_key, task_message
from lewis_tasks.producer.base import await_result, submit

from . import platform as plat
from .atomic import save
from .harness import interleaved, percentile, private_redis, processes, wait_workers

SAMPLES, WARMUP = 400, 30


def _listener(system: plat.System, name: str, queue: str) -> None:
    submit(name, app=system.app, queue=queue).wait(timeout=10)


def _celery_wait(system: plat.System, name: str, queue: str) -> None:
    from celery.result import AsyncResult

    task_id = str(uuid.uuid4())
    message = task_message(name, task_id, (), {}, queue, message_origin(), 0)
    system.app.backend.on_task_call(None, task_id)  # SUBSCRIBE sent, not awaited
    push_messages(system.broker, queue_key(queue, 0), [message])
    await_result(AsyncResult(task_id, app=system.app), 10)


SIDES: dict[str, Callable[[plat.System, str, str], None]] = {
    "listener": _listener,
    "celery_wait": _celery_wait,
}


def _sample(round_trip: Callable[[], None]) -> dict[str, float]:
    for _ in range(WARMUP):
        round_trip()
    rtts = []
    cpu = time.process_time()
    for _ in range(SAMPLES):
        began = time.perf_counter()
        round_trip()
        rtts.append((time.perf_counter() - began) * 1000)
    cpu = time.process_time() - cpu
    return {
        "p50_ms": percentile(rtts, 50),
        "p99_ms": percentile(rtts, 99),
        "producer_cpu_ms": cpu / SAMPLES * 1000,
        "load1": os.getloadavg()[0],
    }


def run(runs: int) -> dict[str, dict[str, list[float]]]:
    figures: dict[str, dict[str, list[float]]] = {side: {} for side in SIDES}
    with private_redis() as server, tempfile.TemporaryDirectory() as tmp:
        system = plat.System("lewis", server, Path(tmp))
        name, queue = system.task("noop_io")
        system.reset()
        with processes(system.workers("noop_io")[:1], system.env, "result-wait"):
            wait_workers(system.app, 1)
            for i in range(runs):
                for side in interleaved(list(SIDES), i):
                    sample = _sample(lambda side=side: SIDES[side](system, name, queue))  # type: ignore[misc]
                    for key, value in sample.items():
                        figures[side].setdefault(key, []).append(value)
                    shown = json.dumps({k: round(v, 3) for k, v in sample.items()})
                    print(f"  run {i + 1} {side:<11} {shown}", flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-r", "--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    save(run(args.runs), "result_wait.json", write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
