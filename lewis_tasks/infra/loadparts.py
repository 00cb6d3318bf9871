"""Which worker process runs which part of a load test: parts belong on different processes.

Each part claims its process in a Redis hash (process → part) before it meets the others at
the barrier. A part that finds its process already holding another part of the run is handed
back to the queue by its task, so an idle process takes it.
"""

from __future__ import annotations

import redis

PROCESSES_KEY = "lewis:loadtest:{run}:processes"  # hash: worker process → the part it runs
BARRIER_KEY = "lewis:loadtest:{run}:barrier"


def claim_process(client: redis.Redis, run_id: str, process: str, part: int, ttl: int) -> bool:
    """Claim ``process`` for ``part`` of ``run_id``; False if it runs another part already.

    Idempotent: a part delivered again to the process it claimed claims it again.
    """
    key = PROCESSES_KEY.format(run=run_id)
    pipe = client.pipeline(transaction=True)
    pipe.hsetnx(key, process, part)
    pipe.hget(key, process)
    pipe.expire(key, ttl)
    _, holder, _ = pipe.execute()
    return int(holder) == part


__all__ = ["PROCESSES_KEY", "BARRIER_KEY", "claim_process"]
