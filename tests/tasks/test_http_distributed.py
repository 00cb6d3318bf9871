"""A load test spread over two real io worker processes: one part on each, started together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lewis_tasks.producer.http import submit_loadtest
from tests.conftest import stack_env
from tests.support.httpservers import ServerThread
from tests.support.procs import lewis_process, wait_for, worker_names

pytestmark = pytest.mark.slow


def test_two_parts_run_on_two_io_processes(
    redis_url: str, tmp_path: Path, lewis_settings: Any, celery_app: Any, serve: ServerThread
) -> None:
    env = stack_env(redis_url, tmp_path, LEWIS_DATABASE_URL=lewis_settings.database.url)
    names = ("ioa", "iob", "merger")
    with (
        lewis_process(["worker", "io", "-c", "4", "-n", "ioa@%h"], env, tmp_path / "ioa.log"),
        lewis_process(["worker", "io", "-c", "4", "-n", "iob@%h"], env, tmp_path / "iob.log"),
        lewis_process(
            ["worker", "cpu", "-c", "1", "-n", "merger@%h"], env, tmp_path / "merger.log"
        ),
    ):
        url = serve.start("app", "127.0.0.1").url
        wait_for(
            lambda: {n.split("@")[0] for n in worker_names(celery_app)} >= set(names),
            60,
            what="two io workers and a cpu worker",
        )
        # When a load test asks for 2 workers
        handle = submit_loadtest(f"{url}/bytes/64", concurrency=4, requests=400, workers=2)
        result = handle.wait(timeout=90)
    # Then each part ran in its own process, and the merge counts both
    assert len(result["processes"]) == 2 and not result["shared_process"], result["by_part"]
    assert [p["requests"] for p in result["by_part"]] == [200, 200]
    assert result["requests"] == 400 == result["latency_ms"]["count"]
    assert result["status_counts"] == {"200": 400}
