"""Benchmark tasks: the smallest units of work, to measure the task system itself.

``noop`` and ``io_noop`` do nothing (round trip and drain rate per queue); ``io_sleep`` waits
on the io worker's persistent event loop (IO-bound throughput: many waits in flight per
process without a thread each).
"""

from __future__ import annotations

import asyncio

from ..errors import InvalidInput
from ..infra.celery_app import app
from .iobatch import io_task

MAX_SLEEP = 10.0


@app.task(name="lewis.bench.noop")
def noop(*_args: object) -> None:
    """Nothing, on the cpu queue."""


@io_task(name="lewis.bench.io_noop")
def io_noop(*_args: object) -> None:
    """Nothing, on the io queue (packable: submit_many packs many into one message)."""


@io_task(name="lewis.bench.io_sleep")
async def io_sleep(seconds: float) -> float:
    """Wait ``seconds`` on the process's event loop (not in the pool thread's own sleep)."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not 0 <= seconds <= MAX_SLEEP
    ):
        raise InvalidInput(f"seconds must be a number in [0, {MAX_SLEEP}], got {seconds!r}")
    return await asyncio.sleep(seconds, result=float(seconds))
