"""Tasks for the kill tests, loaded into real worker subprocesses with ``-I``.

They record into Redis (the worker's db): starts per key, and an idempotent result keyed by
the work key — the way real tasks persist by scan id.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from lewis_tasks.infra.celery_app import app
from lewis_tasks.infra.redis_client import get_redis


@app.task(name="lewis.testing.record")
def record(key: str, seconds: float) -> str:
    """Count a start, work ``seconds``, then record the result once (HSETNX: a rerun changes nothing)."""
    client = get_redis()
    client.incr(f"test:starts:{key}")
    client.set(f"test:running:{key}", os.getpid())
    time.sleep(seconds)
    client.hsetnx("test:records", key, f"done by {os.getpid()}")
    client.incr(f"test:completions:{key}")
    return key


@app.task(name="lewis.testing.nap")
def nap(key: str, seconds: float) -> str:
    """Sleep ``seconds`` and return ``key``; touches no Redis (only its result is stored)."""
    time.sleep(seconds)
    return key


# --- the chaos ledger: tasks that count their own runs in a Redis outside the fault -------

TALLY_STARTS, TALLY_RUNS = "chaos:starts", "chaos:runs"
TALLY_RECORDS, TALLY_WHERE, TALLY_DONE = "chaos:records", "chaos:where", "chaos:done"


@app.task(name="lewis.testing.tally")
def tally(ledger_url: str, key: str, seconds: float) -> str:
    """The chaos load's unit of work (sent to the io or the cpu queue): count a start and where
    it runs, work, then record the result once (HSETNX) and the completion time. The ledger is
    a Redis of its own: a broker fault never touches the count."""
    client = get_redis(ledger_url)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(TALLY_STARTS, key, 1)
    pipe.hset(TALLY_WHERE, key, os.getpid())
    pipe.execute()
    time.sleep(seconds)
    pipe.hsetnx(TALLY_RECORDS, key, f"done by {os.getpid()}")
    pipe.hincrby(TALLY_RUNS, key, 1)
    pipe.rpush(TALLY_DONE, f"{time.time():.3f} {key}")
    pipe.execute()
    return key


@app.task(name="lewis.testing.poison")
def poison(ledger_url: str, key: str) -> None:
    """Count a start in the ledger, then kill the process that runs it, every time."""
    get_redis(ledger_url).hincrby(TALLY_STARTS, key, 1)
    os.kill(os.getpid(), signal.SIGKILL)


# --- a kill -9 in the middle of a scan merge, on demand ------------------------------------

KILL_MERGE_KEY = "test:kill-merge"  # set it, and the next merge's pool child dies mid-merge
KILLED_MERGE_KEY = "test:killed-merge"  # "<time> <scan id>" of the merge that died


def _merges_die_when_armed() -> None:
    """Fault injection at an exact point: after the merge read every chunk and before it
    stored the findings, the child SIGKILLs itself (once per arming). A merge is too short to
    hit from outside; this is the kill -9 landing there."""
    from lewis_tasks.storage import scans

    store = scans.upsert_findings

    def upsert_findings(session: Any, scan_id: str, findings: Any) -> int:
        from celery import current_task

        if getattr(current_task, "name", None) != "lewis.scan.merge":
            return store(session, scan_id, findings)  # a one-chunk scan merging in place
        client = get_redis()
        if client.getdel(KILL_MERGE_KEY):
            client.set(KILLED_MERGE_KEY, f"{time.time():.3f} {scan_id}")
            os.kill(os.getpid(), signal.SIGKILL)
        return store(session, scan_id, findings)

    scans.upsert_findings = upsert_findings  # type: ignore[assignment]


_merges_die_when_armed()
