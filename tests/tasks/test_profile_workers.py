"""Diagnose and profile against real worker subprocesses: a prefork cpu worker and a threads io worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lewis_tasks.producer.profile import submit_diagnose, submit_profile
from tests.conftest import stack_env
from tests.support.procs import lewis_process, wait_for, worker_names

pytestmark = pytest.mark.slow


def test_diagnose_answers_once_per_real_worker_with_its_pool(
    redis_url: str, tmp_path: Path, lewis_settings: Any, celery_app: Any
) -> None:
    env = stack_env(redis_url, tmp_path, LEWIS_DATABASE_URL=lewis_settings.database.url)
    # Given a prefork cpu worker with one child and a threads io worker
    with (
        lewis_process(["worker", "cpu", "-c", "1", "-n", "diag-cpu@%h"], env, tmp_path / "cpu.log"),
        lewis_process(["worker", "io", "-c", "3", "-n", "diag-io@%h"], env, tmp_path / "io.log"),
    ):
        wait_for(
            lambda: {n.split("@")[0] for n in worker_names(celery_app)} >= {"diag-cpu", "diag-io"},
            60,
            what="both workers",
        )
        # When the cluster is diagnosed
        report = submit_diagnose().wait(timeout=60)
        # Then each live worker answered once, and the roll-up counts both
        by_name = {w["worker"].split("@")[0]: w for w in report["workers"]}
        assert sorted(by_name) == ["diag-cpu", "diag-io"] and report["missing"] == []
        assert report["totals"]["workers"] == report["totals"]["replied"] == 2
        cpu, io = by_name["diag-cpu"], by_name["diag-io"]
        # the cpu worker: prefork, its parent and its one child, the recycle limit it runs with
        assert cpu["pool"] == "prefork" and cpu["pool_size"] == 1
        assert cpu["pool_busy"] == 1  # the diagnose task itself runs in that one child
        roles = [p["role"] for p in cpu["snapshot"]["processes"]]
        assert roles[0] == "parent" and roles.count("child") >= 1
        assert cpu["recycle_limit_bytes"] == lewis_settings.memory.max_heap_size
        # the io worker: a threads pool of 3, no children to recycle
        assert io["pool"] == "thread" and io["pool_size"] == 3 and io["pool_busy"] == 0
        assert io["recycle_limit_bytes"] is None
        assert report["totals"]["pool_rss_bytes"] == sum(
            w["snapshot"]["pool_rss_bytes"] for w in report["workers"]
        )

        # And a profile runs in the forked child: memory traced, io_sleep on the child's own loop
        hot = submit_profile("workload.match_services", kwargs={"services": 300}).report(timeout=60)
        assert hot.ok and any(r.function == "find_cves" for r in hot.by_cumulative)
        slept = submit_profile("lewis.bench.io_sleep", [0.05]).wait(timeout=60)
        assert slept["status"] == "ok" and slept["wall_seconds"] >= 0.05
        assert slept["worker"].startswith("diag-cpu@")
