"""What running a process's scan chunks side by side costs: N connect loops in N threads, with
and without taking turns to launch connects, vs the same N chunks one after another in one
thread (issue 18.4).

    python -m bench.scan_loops [--runs 3]

In this process, no task system: every port of 127.0.0.1 (300 listeners from
``tests/support/listeners.py --seed 7``, as ``bench.scan_stack`` opens them) cut into N chunks
and scanned with ``domain.portscan.scan_ports`` on one event loop, each chunk's connect loop in
a thread of an executor of the given size, each with its share of ``scan.concurrency`` (as
``tasks.scan`` gives it), sharing one ``connectloop.Turns`` or not. Reported per shape: wall seconds and CPU seconds (user, system) of
this process, medians of ``runs``, interleaved; and whether every run found the same open set.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.harness import median
from bench.scan import ADDRESS, _listeners
from lewis_tasks.domain.connectloop import Turns
from lewis_tasks.domain.portscan import scan_ports
from lewis_tasks.domain.scope import Scope

# (chunks, threads, turns): 17 threads = an io worker's slots + 1, as its runtime has
SHAPES = [(1, 1, False), (16, 1, False), (16, 17, False), (16, 17, True), (32, 33, False)]
SHAPES += [(32, 33, True)]
CONCURRENCY = 4096  # scan.concurrency's default: connects in flight per process


def _chunks(n: int) -> list[range]:
    size = -(-65535 // n)
    return [range(1 + i * size, min(65536, 1 + (i + 1) * size)) for i in range(n)]


async def _scan(chunks: int, threads: int, turns: bool) -> frozenset[int]:
    scope = Scope((ipaddress.ip_network(f"{ADDRESS}/32"),), ())
    shared = Turns() if turns else None
    with ThreadPoolExecutor(threads, thread_name_prefix="scan") as executor:
        share = max(64, CONCURRENCY // chunks)
        results = await asyncio.gather(
            *(
                scan_ports(
                    ADDRESS, part, scope=scope, concurrency=share, executor=executor, turns=shared
                )
                for part in _chunks(chunks)
            )
        )
    return frozenset(p for r in results for p in r.open)


def _once(chunks: int, threads: int, turns: bool) -> dict[str, Any]:
    before, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    found = asyncio.run(_scan(chunks, threads, turns))
    wall, after = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "system": after.ru_stime - before.ru_stime,
        "open": found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    out: dict[tuple[int, int, bool], list[dict[str, Any]]] = {shape: [] for shape in SHAPES}
    with _listeners():
        for _ in range(args.runs):
            for shape in SHAPES:  # interleaved
                out[shape].append(_once(*shape))
    reference = out[SHAPES[0]][0]["open"]
    print(
        "| chunks | threads | turns | wall (s) | user (s) | system (s) | CPU ÷ one loop "
        "| same open set |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---|")
    base = median([r["user"] + r["system"] for r in out[SHAPES[0]]])
    for (chunks, threads, turns), rows in out.items():
        cpu = median([r["user"] + r["system"] for r in rows])
        same = all(r["open"] == reference for r in rows)
        print(
            f"| {chunks} | {threads} | {'yes' if turns else 'no'} | "
            f"{median([r['wall'] for r in rows]):.2f} | "
            f"{median([r['user'] for r in rows]):.2f} | {median([r['system'] for r in rows]):.2f} "
            f"| {cpu / base:.2f} | {same} |"
        )


if __name__ == "__main__":
    main()
