"""A scan survives an io worker killed mid-chunk: real worker subprocesses, kill -9."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from lewis_tasks.domain.services import guess_name
from lewis_tasks.domain.targets import format_ports
from lewis_tasks.domain.vulns import sample_records
from lewis_tasks.infra.database import get_engine
from lewis_tasks.infra.progress import SCAN_LIVE_KEY as LIVE_KEY
from lewis_tasks.infra.task import redeliveries
from lewis_tasks.infra.vulnlookup import invalidate_vulnerability_cache
from lewis_tasks.producer.scan import submit_scan
from lewis_tasks.storage import scans, vulns
from lewis_tasks.storage.db import session_scope
from lewis_tasks.storage.models import FindingRow, ScanChunkRow, ScanPortRow
from tests.conftest import stack_env
from tests.support.listeners import ListenerSet, listening_ports, running_listeners
from tests.support.procs import kill_group, lewis_process, wait_for, worker_names

pytestmark = pytest.mark.slow

ADDRESS = "127.88.4.1"
EXTRA = "1-200"


@pytest.fixture(scope="module")
def listeners() -> Iterator[ListenerSet]:
    with running_listeners(12, host=ADDRESS, seed=21, banner_share=0.5) as running:
        yield running


def env_for(redis_url: str, home: Path, settings: Any) -> dict[str, str]:
    return stack_env(
        redis_url,
        home,
        LEWIS_DATABASE_URL=settings.database.url,  # the test's own database
        # a killed worker's message comes back after the visibility timeout
        LEWIS_BROKER_VISIBILITY_TIMEOUT="10",
        LEWIS_TASKS_TIME_LIMIT="9",
        LEWIS_TASKS_SOFT_TIME_LIMIT="8",
        # silent listeners hold identification 2 × 2 s: time to kill the worker
        LEWIS_SCAN_BANNER_TIMEOUT="2",
    )


def test_io_worker_killed_mid_chunk_the_scan_completes_once(
    redis_url: str,
    tmp_path: Path,
    lewis_settings: Any,
    worker_redis: Any,
    celery_app: Any,
    listeners: ListenerSet,
) -> None:
    with session_scope(get_engine()) as session:
        vulns.import_vulnerabilities(session, sample_records())
    invalidate_vulnerability_cache()
    celery_app.control.purge()
    env = env_for(redis_url, tmp_path, lewis_settings)
    scanned = set(range(1, 201)) | set(listeners.ports)
    truth = sorted(listening_ports(ADDRESS) & scanned)
    with lewis_process(["worker", "cpu", "-c", "1", "-n", "merger@%h"], env, tmp_path / "cpu.log"):
        # Given an io worker that takes the scan's one chunk
        with lewis_process(
            ["worker", "io", "-n", "victim@%h"], env, tmp_path / "victim.log"
        ) as victim:
            wait_for(
                lambda: {"victim", "merger"} <= {n.split("@")[0] for n in worker_names(celery_app)},
                30,
                what="the workers",
            )
            handle = submit_scan(ADDRESS, ports=f"{EXTRA},{format_ports(listeners.ports)}")
            key = LIVE_KEY.format(scan_id=handle.id)

            def identifying() -> bool:  # port scan over, services being identified
                live = worker_redis.hget(key, "0")
                return live is not None and int(live.split(b",")[0]) == len(scanned)

            wait_for(identifying, 30, interval=0.05, what="the chunk's port scan to finish")
            # When the worker is killed with SIGKILL in the middle of the chunk
            kill_group(victim)
        with session_scope(get_engine()) as session:
            assert scans.pending_chunks(session, handle.id) == [0]
        # Then a fresh io worker gets the chunk back and the scan completes
        with lewis_process(["worker", "io", "-n", "rescuer@%h"], env, tmp_path / "rescuer.log"):
            report = handle.wait(timeout=90)
    assert report.status == "done"
    assert report.open_ports() == {ADDRESS: truth}
    named = {p["port"]: p["service"] for p in report.hosts[0].open_ports}
    for port, item in listeners.listeners.items():
        assert named[port] == (item.service.name if item.service else guess_name(port))
    # with the same results as one clean run, each recorded once
    with session_scope(get_engine()) as session:
        progress = scans.scan_progress(session, handle.id)
        chunk = session.get(ScanChunkRow, (handle.id, 0))
        ports = session.scalar(
            select(func.count()).select_from(ScanPortRow).where(ScanPortRow.scan_id == handle.id)
        )
        found = session.scalar(
            select(func.count()).select_from(FindingRow).where(FindingRow.scan_id == handle.id)
        )
    assert progress is not None and chunk is not None
    assert (progress.chunks_done, progress.ports_done) == (1, len(scanned))
    assert progress.open_count == ports == found == len(truth)
    assert chunk.task_id is not None and redeliveries(chunk.task_id) == 1
