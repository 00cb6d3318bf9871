"""Bare Celery, defaults only: the yardstick every LEWIS figure is set beside.

Only what a Celery user must set is set: the broker, the result backend, JSON (already the
default). Tasks are the same no-ops and waits as LEWIS's bench tasks.
"""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery(
    "baseline",
    broker=os.environ["BENCH_BROKER_URL"],
    backend=os.environ.get("BENCH_BACKEND_URL", os.environ["BENCH_BROKER_URL"]),
)


@app.task(name="baseline.noop")
def noop(*_args: object) -> None:
    return None


@app.task(name="baseline.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
