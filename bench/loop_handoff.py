"""What handing a coroutine to the process's event loop costs a thread, two ways (issue 18.2).

    python -m bench.loop_handoff [--rounds 3] [--threads 100] [--calls 100] [--sleep 0.005]

In this process, no task system: an ``infra.aio.LoopRuntime`` (the io worker's loop in its own
thread), and ``--threads`` threads each handing it ``--calls`` coroutines that sleep
``--sleep`` s, waiting for each result. *future* is ``LoopRuntime.run`` as shipped
(``asyncio.run_coroutine_threadsafe`` and the ``concurrent.futures.Future`` it returns);
*lock* blocks on a plain lock that the task's done-callback releases (measured, not shipped:
BENCHMARKS.md). Reported per way, alternated ``--rounds`` times: CPU µs of this process and
voluntary context switches per call, and calls per second.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bench.harness import median
from lewis_tasks.infra.aio import LoopRuntime


def by_future(runtime: LoopRuntime, coro: Coroutine[Any, Any, Any]) -> Any:
    return runtime.run(coro)


def by_lock(runtime: LoopRuntime, coro: Coroutine[Any, Any, Any]) -> Any:
    loop = runtime.loop
    done = threading.Lock()
    done.acquire()
    box: list[asyncio.Task[Any]] = []

    def start() -> None:
        task = loop.create_task(coro)
        box.append(task)
        task.add_done_callback(lambda _: done.release())

    loop.call_soon_threadsafe(start)
    done.acquire()
    return box[0].result()


WAYS: dict[str, Callable[[LoopRuntime, Coroutine[Any, Any, Any]], Any]] = {
    "future": by_future,
    "lock": by_lock,
}


def measure(
    runtime: LoopRuntime, way: str, threads: int, calls: int, sleep: float
) -> dict[str, float]:
    handoff = WAYS[way]

    async def work() -> int:
        await asyncio.sleep(sleep)
        return 1

    def worker() -> None:
        for _ in range(calls):
            handoff(runtime, work())

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    r0, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    r1, seconds = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - began
    n = threads * calls
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    return {
        "cpu_us": 1e6 * cpu / n,
        "voluntary_switches": (r1.ru_nvcsw - r0.ru_nvcsw) / n,
        "calls_per_s": n / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=100)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--sleep", type=float, default=0.005)
    args = parser.parse_args()
    runtime = LoopRuntime()
    runs: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:  # alternated
            got = measure(runtime, way, args.threads, args.calls, args.sleep)
            runs[way].append(got)
            print(f"  {way:7} {got['cpu_us']:6.1f} us/call  "
                  f"{got['voluntary_switches']:5.2f} switches/call  "
                  f"{got['calls_per_s']:8,.0f}/s", flush=True)  # fmt: skip
    for way, rows in runs.items():
        print(
            f"{way:7} median {median([r['cpu_us'] for r in rows]):6.1f} us/call, "
            f"{median([r['calls_per_s'] for r in rows]):8,.0f} calls/s"
        )
    runtime.close()


if __name__ == "__main__":
    main()
