"""How many calls of a packable io task travel in one message: ``submit_many``'s default.

A packed message (tasks/iobatch.py) runs its calls together on the io worker's event loop and
is acknowledged once, so Celery's per-message cost is paid once per pack. What a message may
hold is bounded by the work in it: the calls' measured runtime (p95 of the task's recent
runs, from the workers' own reports) times the pack must stay within ``budget`` (~50 ms:
a message is then no longer than a short task, so a worker's prefetch, a warm shutdown and
a redelivery after a crash each cost at most that) and within one share of the broker's
visibility timeout. Without a measurement the calls go one to a message: nothing is known to
bound them.
"""

from __future__ import annotations

import math

WORK_BUDGET = 0.05  # seconds of measured work one message may hold
VISIBILITY_SHARE = 0.01  # ... and at most this share of the broker's visibility timeout
DEFAULT_CAP = 500  # calls per message at most (MAX_PACK, 1000, is what a worker accepts)


def pack_size(
    runtime_p95: float | None,
    visibility_timeout: float,
    *,
    budget: float = WORK_BUDGET,
    cap: int = DEFAULT_CAP,
) -> int:
    """Calls per message for a task whose calls take ``runtime_p95`` seconds (None: never
    measured): as many as fit ``budget`` and the visibility share, 1 to ``cap``."""
    if runtime_p95 is None or not math.isfinite(runtime_p95) or runtime_p95 < 0:
        return 1
    limit = min(budget, visibility_timeout * VISIBILITY_SHARE)
    if runtime_p95 == 0:
        return max(1, cap)
    return max(1, min(cap, int(limit / runtime_p95)))


__all__ = ["DEFAULT_CAP", "VISIBILITY_SHARE", "WORK_BUDGET", "pack_size"]
