"""Test-only benchmark targets, registered into the worker-side registry of this process.

The embedded ``celery_worker`` runs in the test process, so what is registered here is what
its tasks see; real worker subprocesses never import this module.
"""

from __future__ import annotations

import itertools

from lewis_tasks.tasks.profile import BENCHMARKABLE

_calls = itertools.count()


def flaky_every_second_call() -> int:
    """Fails every second call (the first succeeds), counting across the whole process."""
    n = next(_calls)
    if n % 2:
        raise ValueError(f"call {n} fails on purpose")
    return n


def reset() -> None:
    global _calls
    _calls = itertools.count()


if "test.flaky" not in BENCHMARKABLE:
    BENCHMARKABLE.register("test.flaky", flaky_every_second_call)
