"""The one routing table: which queue each task runs on.

Task names are ``lewis.<area>.<verb>``. Patterns are Celery globs, matched in order, so the
specific io entries of an area come before that area's catch-all.
"""

from __future__ import annotations

IO, CPU, CONTROL = "io", "cpu", "control"

# The envelope that carries packed calls of an async io task (tasks/iobatch.py), and how many
# calls one envelope may carry; producers and workers agree on both.
PACKED_TASK = "lewis.io.batch"
MAX_PACK = 1000
# The io tasks declared with tasks/iobatch.py's io_task: submit_many packs their calls by
# default (domain/packing.py sizes the packs); io_task refuses a name missing here.
PACKABLE: frozenset[str] = frozenset({"lewis.bench.io_noop", "lewis.bench.io_sleep"})
QUEUES: tuple[str, ...] = (IO, CPU, CONTROL)
# kombu's Redis transport keeps a queue's priorities in 4 lists: the queue itself (0) and
# "<queue>\x06\x16<step>" for steps 3, 6 and 9, each holding the priorities from its step up
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)

ROUTES: dict[str, str] = {
    # io: network-bound work on the persistent event loop
    "lewis.scan.chunk": IO,
    "lewis.http.fetch_chunk": IO,
    "lewis.http.loadtest_part": IO,
    "lewis.bench.io_*": IO,
    "lewis.io.*": IO,  # packed io calls (tasks/iobatch.py)
    # cpu: merging, reports, profiling, CPU benchmarks
    "lewis.scan.*": CPU,
    "lewis.http.*": CPU,
    "lewis.profile.*": CPU,
    "lewis.bench.*": CPU,
    # control: beat jobs, never behind a backlog
    "lewis.control.*": CONTROL,
}


def queue_for(task_name: str) -> str:
    """The queue ``task_name`` is routed to (cpu when no pattern matches)."""
    from fnmatch import fnmatchcase

    for pattern, queue in ROUTES.items():
        if fnmatchcase(task_name, pattern):
            return queue
    return CPU


def celery_routes() -> dict[str, dict[str, str]]:
    return {pattern: {"queue": queue, "routing_key": queue} for pattern, queue in ROUTES.items()}
