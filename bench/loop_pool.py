"""Experiment (issue 18.2): io tasks written as coroutines on the event loop (greenlets) vs
Celery's threads pool, with and without a 16-message minimum take. Needs ``greenlet``.

    python -m bench.loop_pool [runs]
"""

import json
import sys

from bench import atomic
from bench.harness import median

SIDES = {
    "threads": {},
    "threads_m16": {"XLEWIS_TAKE_MIN": "16"},
    "loop_m16": {"XLEWIS_TAKE_MIN": "16", "LEWIS_WORKERS_IO_POOL": "loop"},
}

if __name__ == "__main__":
    fig = atomic.run(int(sys.argv[1]) if len(sys.argv) > 1 else 3, SIDES, waits=True)
    print(json.dumps(fig))
    for s, f in fig.items():
        print(s, {k: round(median(v), 3) for k, v in f.items()})
