"""Waiting by push: handles' ``wait()`` returns on the result backend's publish, not on a
fixed-interval poll, and a lost push still ends the wait (the bounded fallback re-read).

A fallback of an hour shows the push at work (without it the wait would run out); a result
stored WITHOUT its publish shows the fallback at work (without it the wait would run out)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lewis_tasks.infra.database import get_engine
from lewis_tasks.producer.base import TaskHandle, submit
from lewis_tasks.producer.scan import ScanHandle, _record, submit_scan
from lewis_tasks.storage import scans
from lewis_tasks.storage.db import session_scope
from tests.support.listeners import running_listeners

WAIT = 30
NO_FALLBACK = 3600.0  # longer than WAIT: only a push can end these waits in time


@pytest.fixture(scope="module")
def celery_worker(
    celery_app: Any, celery_includes: Any, celery_worker_pool: Any, celery_worker_parameters: Any
) -> Iterator[Any]:
    from celery.contrib.testing import worker

    with worker.start_worker(celery_app, pool=celery_worker_pool, **celery_worker_parameters) as w:
        yield w


def later(action: Any, delay: float = 0.5) -> threading.Thread:
    """Run ``action`` on a thread after ``delay`` s (after the wait has begun)."""
    thread = threading.Timer(delay, action)
    thread.start()
    return thread


def test_a_task_wait_ends_on_the_push(celery_worker: Any) -> None:
    handle = submit("lewis.bench.io_sleep", args=[0.3])
    assert handle.wait(timeout=WAIT, interval=NO_FALLBACK) == pytest.approx(0.3, abs=0.3)


def test_a_task_result_stored_without_its_push_still_ends_the_wait(celery_app: Any) -> None:
    # Given a task whose result is stored but never published (a lost push)
    task_id = uuid.uuid4().hex
    backend = celery_app.backend
    meta = {
        "status": "SUCCESS",
        "result": 42,
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": task_id,
    }
    stored = later(
        lambda: backend.client.set(backend.get_key_for_task(task_id), backend.encode(meta))
    )
    # Then the wait still ends, with the result, by its fallback re-read
    assert (
        TaskHandle(task_id, "lewis.bench.noop", celery_app).wait(timeout=WAIT, interval=0.2) == 42
    )
    stored.join()


@pytest.mark.parametrize("ports", ["1-20", "1-300"])  # one chunk, and a chord of several
def test_a_scan_wait_ends_on_the_push(celery_worker: Any, ports: str) -> None:
    from tests.tasks.test_scan import settings_changed

    with (
        running_listeners(2, host="127.88.2.9", seed=7, banner_share=0) as listening,
        settings_changed(scan={"chunk_ports": 100}),
    ):
        handle = submit_scan(
            "127.88.2.9", ports=f"{ports},{','.join(map(str, listening.ports))}", services=False
        )
        report = handle.wait(timeout=WAIT, interval=NO_FALLBACK)
    assert report.status == "done"
    assert report.open_ports()["127.88.2.9"] == listening.ports


def test_a_scan_done_without_its_push_still_ends_the_wait(
    celery_app: Any, lewis_settings: Any
) -> None:
    from lewis_tasks.domain.targets import ScanChunk as Chunk

    # Given a scan whose merging task never reports (its push is lost)
    scan_id = f"quiet-{time.monotonic_ns()}"
    _record(
        scan_id,
        {"targets": ["127.0.0.1"], "ports": "1", "target_rows": []},
        [Chunk("127.0.0.1", None, "1", 1)],
    )

    def finish() -> None:
        with session_scope(get_engine()) as session:
            scans.set_scan_status(session, scan_id, "done", summary={"open": 0})

    done = later(finish)
    # Then the wait ends once the database says done, by its fallback re-read
    report = ScanHandle(scan_id, celery_app, uuid.uuid4().hex).wait(timeout=WAIT, interval=0.2)
    assert report.status == "done"
    done.join()
