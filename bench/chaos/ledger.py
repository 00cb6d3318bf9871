"""Counting under faults: a ledger Redis outside the fault, the steady load that feeds it, and
the figures every experiment reports.

Each submitted task has an id; the task (``lewis.testing.tally`` in tests/support/killtasks.py)
counts its starts and completed runs per id and records its result once (HSETNX) in the
ledger, a redis-server of its own that no experiment touches. lost = submitted − completed;
run more than once = ids with more than one start; harmless = every completed id holds
exactly one record (and the record count equals the completed count).
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from lewis_tasks.errors import LewisError
from lewis_tasks.infra.redis_server import EmbeddedRedis
from tests.support.killtasks import (
    TALLY_DONE,
    TALLY_RECORDS,
    TALLY_RUNS,
    TALLY_STARTS,
    TALLY_WHERE,
)

TALLY = "lewis.testing.tally"
TASK_IDS = "chaos:task-ids"  # id → Celery task id, written by the producer


@dataclass
class Figures:
    """What one experiment reports (the row of the Chaos table)."""

    experiment: str
    key: str = ""  # the name `python -m bench.chaos` knows it by
    submitted: int = 0
    completed: int = 0
    rerun: int = 0  # ids started more than once
    duplicates: int = 0  # ids whose work completed more than once
    harmless: bool = True  # every completed id holds exactly one record
    recovery_s: float | None = None  # None: never recovered within the experiment's patience
    bound_s: float = 0.0  # the configured timeout recovery must stay within
    bound_name: str = ""
    faults: int = 0
    refused: int = 0  # submits the broker refused during the fault (the caller saw an error)
    allowed_lost: int = 0  # beats: a failover may skip one slot (issue 12, item 9)
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.submitted - self.completed

    @property
    def passed(self) -> bool:
        return (
            self.lost <= self.allowed_lost
            and self.harmless
            and self.recovery_s is not None
            and self.recovery_s <= self.bound_s
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lost": self.lost, "passed": self.passed}

    def line(self) -> str:
        recovery = "never" if self.recovery_s is None else f"{self.recovery_s:.1f}s"
        return (
            f"{self.experiment:<26} submitted {self.submitted:>5}  completed "
            f"{self.completed:>5}  lost {self.lost:>4}  run>1 {self.rerun:>3} "
            f"(duplicates {self.duplicates}, {'harmless' if self.harmless else 'HARMFUL'})  "
            f"recovery {recovery} (≤ {self.bound_s:.0f}s {self.bound_name})  "
            f"{'ok' if self.passed else 'FAILED'}"
            + (f"  [{'; '.join(self.notes)}]" if self.notes else "")
        )


class Ledger:
    """The ledger Redis and what the tasks wrote into it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)

    def clear(self) -> None:
        self.client.delete(
            TALLY_STARTS, TALLY_RUNS, TALLY_RECORDS, TALLY_WHERE, TALLY_DONE, TASK_IDS
        )

    def starts(self, key: str) -> int:
        return int(self.client.hget(TALLY_STARTS, key) or 0)

    def completed(self) -> set[str]:
        return set(self.client.hkeys(TALLY_RECORDS))

    def completions(self) -> list[tuple[float, str]]:
        """(time, id) of every completed run, in order."""
        out = []
        for raw in self.client.lrange(TALLY_DONE, 0, -1):
            when, key = raw.split(" ", 1)
            out.append((float(when), key))
        return out

    def running_on(self, pids: set[int]) -> set[str]:
        """Ids last started by one of ``pids`` and not completed: what a kill interrupts."""
        done = self.completed()
        return {
            k
            for k, v in self.client.hgetall(TALLY_WHERE).items()
            if int(v) in pids and k not in done
        }

    def figures(self, name: str, submitted: set[str]) -> Figures:
        starts = {k: int(v) for k, v in self.client.hgetall(TALLY_STARTS).items()}
        runs = {k: int(v) for k, v in self.client.hgetall(TALLY_RUNS).items()}
        records = self.completed()
        completed = records & submitted
        lost = submitted - completed
        notes = []
        if lost:  # where they were lost: before any run, or in a run that never completed
            never = sum(1 for k in lost if not starts.get(k))
            example = sorted(lost)[0]
            notes.append(
                f"lost: {never} never started, {len(lost) - never} started and "
                f"never completed (e.g. {example}, task "
                f"{self.client.hget(TASK_IDS, example)})"
            )
        return Figures(
            name,
            submitted=len(submitted),
            completed=len(completed),
            notes=notes,
            rerun=sum(1 for k in submitted if starts.get(k, 0) > 1),
            duplicates=sum(1 for k in submitted if runs.get(k, 0) > 1),
            harmless=all(runs.get(k, 0) >= 1 for k in completed)
            and self.client.hlen(TALLY_RECORDS) == len(records),
        )

    def first_completion_after(self, when: float, among: set[str] | None = None) -> float | None:
        times = [t for t, k in self.completions() if t > when and (among is None or k in among)]
        return min(times) if times else None

    def last_completion_of(self, keys: set[str]) -> float | None:
        """When the last of ``keys`` first completed; None while one is still missing."""
        first: dict[str, float] = {}
        for t, k in self.completions():
            if k in keys:
                first.setdefault(k, t)
        return max(first.values()) if keys and len(first) == len(keys) else None


@contextlib.contextmanager
def ledger_redis() -> Iterator[Ledger]:
    """A private redis-server for the ledger (no AOF: it lives as long as the run)."""
    with tempfile.TemporaryDirectory(prefix="lewis-chaos-ledger-") as tmp:
        server = EmbeddedRedis(Path(tmp), appendonly=False).start()
        try:
            yield Ledger(server.url)
        finally:
            server.stop()


Send = Callable[[int], str]  # submit task number n; its id, or LewisError if refused


def tally_sender(ledger: Ledger, queue: str, seconds: float, prefix: str) -> Send:
    """Submit ``lewis.testing.tally`` tasks of ``seconds`` to ``queue``, ids ``prefix-n``."""
    from lewis_tasks.producer import submit_many

    def send(n: int) -> str:
        key = f"{prefix}-{n}"
        [handle] = submit_many(TALLY, [((ledger.url, key, seconds), {})], queue=queue)
        ledger.client.hset(TASK_IDS, key, handle.id)  # to find a lost one in the worker logs
        return key

    return send


class BackgroundLoad:
    """A load thread run as a context manager: started on entry, stopped (and joined) on exit.
    Subclasses set up their state, call ``super().__init__(name)`` and define ``_run``, which
    returns once ``self._stop`` is set."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        raise NotImplementedError


class SteadyLoad(BackgroundLoad):
    """A thread submitting ``rate`` tasks a second through ``send`` until stopped.

    A submit the broker refuses (it is down) is counted as refused and its id dropped: the
    caller was told. Everything accepted is in ``submitted``.
    """

    def __init__(self, send: Send, rate: float) -> None:
        self.send, self.rate = send, rate
        self.submitted: set[str] = set()
        self.refused = 0
        super().__init__("steady-load")

    def _run(self) -> None:
        period = 1.0 / self.rate
        next_at = time.monotonic()
        for n in itertools.count():
            if self._stop.is_set():
                return
            try:
                self.submitted.add(self.send(n))
            except LewisError:
                self.refused += 1
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def wait_drained(ledger: Ledger, submitted: set[str], patience: float) -> bool:
    """Wait until every submitted id completed, at most ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if submitted <= ledger.completed():
            return True
        time.sleep(0.25)
    return False
