"""One plain process running LEWIS's open-loop load generator: no Celery, no worker.

    python -m bench.openloop URL RATE CONCURRENCY DURATION START_AT

The same ``run_loadtest`` a load-test part runs, on uvloop with the worker's GC settings,
started at the wall-clock instant START_AT (so several of these start together). Prints the
LoadResult as one JSON line. bench/http.py runs two of them beside the stack's two parts: the
difference is what the task system costs the latency; what is left is the client's own.
"""

from __future__ import annotations

import asyncio
import json
import sys


async def load(
    url: str, rate: float, concurrency: int, duration: float, start_at: float
) -> dict[str, object]:
    from lewis_tasks.domain.httpclient import create_session
    from lewis_tasks.domain.loadgen import run_loadtest
    from lewis_tasks.domain.scope import Scope

    session = create_session(
        Scope.from_allow(["127.0.0.0/8", "::1/128"]),
        max_connections=concurrency,
        limit_per_host=0,
        connect_timeout=3.0,
        read_timeout=None,
        keep_alive=True,
    )
    async with session:
        result = await run_loadtest(
            session,
            url,
            concurrency=concurrency,
            duration=duration,
            rate=rate,
            start_at=start_at,
            max_duration=duration + 5,
            max_concurrency=concurrency,
            max_rate=int(rate) + 1,
            max_requests=10**9,
        )
    return result.to_dict()


def main() -> None:
    url, rate, concurrency, duration, start_at = sys.argv[1:6]
    if not url.startswith(("http://127.", "http://[::1]")):
        raise SystemExit("loopback only")
    from lewis_tasks.infra.signals import tune_gc

    tune_gc(50_000)  # the io worker's memory.gc_young_threshold default
    coro = load(url, float(rate), int(concurrency), float(duration), float(start_at))
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
