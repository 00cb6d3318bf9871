"""The ``local`` actuator's other half: ``lewis up``'s supervisor runs the wanted worker count.

The decision job runs in the control worker, a child of the supervisor; it reaches the
supervisor through the broker's Redis: it writes the wanted count per queue
(``lewis:scaling:desired:<queue>``, infra/actuators.py) and the supervisor, on every poll
of its loop, reconciles:

* fewer workers of the queue's profile than wanted: start more, each a child of its own
  named ``io-2``, ``io-3``… (Celery node ``io-2@host``), supervised and listed in
  stack.json like the first, and visible in ``lewis status`` by their pings;
* more than wanted: retire the newest — ``lewis_drain`` (stop consuming, finish what it
  holds, warm exit) or, when it does not answer yet, SIGTERM (Celery's warm shutdown); a
  retiring child is not restarted, and leaves the list when it has exited.

It reports what runs (and a start that failed) under ``lewis:scaling:local`` with a short
TTL, which is also how the ``auto`` actuator knows a supervisor is there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import redis

from .actuators import DESIRED_KEY, LOCAL_KEY, LOCAL_TTL, read_desired
from .config import SCALED_QUEUES

log = logging.getLogger(__name__)

DRAIN_REPLY_TIMEOUT = 1.0  # seconds the supervisor waits for lewis_drain's answer


class LocalPool:
    """Reconcile the supervisor's worker children with the wanted counts in Redis.

    ``children()`` lists the stack's children, ``add(profile)`` starts one more worker of a
    profile and returns it, ``drain(node)`` asks a worker to drain (True if it answered).
    """

    def __init__(
        self,
        client: redis.Redis,
        children: Callable[[], list[Any]],
        add: Callable[[str], Any],
        drain: Callable[[str], bool],
        cap: int,
        queues: tuple[str, ...] = SCALED_QUEUES,
    ) -> None:
        self.client, self.children, self.add, self.drain = client, children, add, drain
        self.cap, self.queues = cap, queues
        self.errors: dict[str, str | None] = {}
        with contextlib.suppress(redis.RedisError, OSError):  # a new stack starts from its own
            client.delete(*[DESIRED_KEY.format(queue=q) for q in queues])

    def tend(self) -> None:
        """One reconciliation of every scaled queue, then the report; Redis down: skip."""
        try:
            wanted = {q: read_desired(self.client, q) for q in self.queues}
        except (redis.RedisError, OSError) as exc:
            log.debug("local pool: desired counts unreadable: %s", exc)
            return
        for queue, desired in wanted.items():
            if desired is not None:
                self.reconcile(queue, min(desired, self.cap))
        with contextlib.suppress(redis.RedisError, OSError):
            self.client.set(LOCAL_KEY, json.dumps(self.report(wanted)), px=int(LOCAL_TTL * 1000))

    def members(self, queue: str) -> list[Any]:
        return [c for c in self.children() if c.profile == queue and not c.retiring]

    def reconcile(self, queue: str, desired: int) -> None:
        members = self.members(queue)
        self.errors[queue] = None
        while len(members) < desired:
            try:
                child = self.add(queue)
            except Exception as exc:  # fork refused, interpreter missing: report, retry later
                self.errors[queue] = f"a new {queue} worker did not start: {exc}"
                log.error("local pool: %s", self.errors[queue])
                return
            log.warning(
                "scaling %s up: started %s (pid %s, node %s)",
                queue,
                child.name,
                child.pid,
                child.node,
            )
            members.append(child)
        for child in members[desired:][::-1]:  # the newest go first; the first stays longest
            self.retire(child)

    def retire(self, child: Any) -> None:
        """Drain ``child``: it finishes what it holds and exits warm; never restarted."""
        child.retiring = True
        answered = child.node is not None and self.drain(child.node)
        if not answered and child.alive():  # not consuming yet, or not answering: warm stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        log.warning(
            "scaling %s down: draining %s (pid %s, %s)",
            child.profile,
            child.name,
            child.pid,
            "lewis_drain" if answered else "SIGTERM",
        )

    def report(self, wanted: dict[str, int | None]) -> dict[str, Any]:
        queues = {}
        for q in self.queues:
            mine = [c for c in self.children() if c.profile == q]
            queues[q] = {
                "desired": wanted.get(q),
                "error": self.errors.get(q),
                "running": [c.name for c in mine if not c.retiring],
                "nodes": [c.node for c in mine if not c.retiring],
                "draining": [c.name for c in mine if c.retiring],
            }
        return {"pid": os.getpid(), "at": time.time(), "cap": self.cap, "queues": queues}


__all__ = ["LocalPool"]
