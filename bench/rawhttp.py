"""The anchor for HTTP batches: a plain single-process aiohttp script, no task system.

    python -m bench.rawhttp URL COUNT [--limit 100]

GETs ``URL`` ``COUNT`` times with ``--limit`` coroutines over one keep-alive session whose
connector has the same limit, reads every body, and prints one JSON line: requests/s, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def fetch_many(url: str, count: int, limit: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        todo = iter(range(count))
        ok = errors = 0

        async def work() -> None:
            nonlocal ok, errors
            for _ in todo:
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        ok += 1
                except aiohttp.ClientError:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(work() for _ in range(limit)))
        seconds = time.perf_counter() - began
    return {
        "requests": count,
        "ok": ok,
        "errors": errors,
        "seconds": seconds,
        "rps": count / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://[::1]")):
        parser.error("loopback only")
    print(json.dumps(asyncio.run(fetch_many(args.url, args.count, args.limit))))


if __name__ == "__main__":
    main()
