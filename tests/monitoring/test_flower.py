"""Flower stays in the stack: its API lists the tasks our workers ran."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lewis_tasks.infra.redis_server import free_port
from tests.conftest import stack_env
from tests.support.procs import lewis_process, wait_for, worker_names
from tests.test_compose import flower_healthcheck_code

pytestmark = pytest.mark.slow


def test_flower_api_lists_the_tasks_our_workers_ran(
    redis_url: str, tmp_path: Path, lewis_settings: Any, celery_app: Any
) -> None:
    from lewis_tasks.producer.base import submit_many, wait_all

    env = stack_env(
        redis_url,
        tmp_path,
        LEWIS_DATABASE_URL=lewis_settings.database.url,
        LEWIS_STACK_FLOWER_USER="ops",
        LEWIS_STACK_FLOWER_PASSWORD="pw-for-test",
    )
    port = free_port()
    auth = "Basic " + base64.b64encode(b"ops:pw-for-test").decode()

    def api(path: str) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", headers={"Authorization": auth}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def flower_sees_worker() -> bool:
        try:
            return any(name.startswith("flower-cpu@") for name in api("/api/workers?refresh=1"))
        except OSError:
            return False

    # Given a cpu worker and Flower (which turns the workers' task events on)
    with (
        lewis_process(
            ["worker", "cpu", "-c", "1", "-n", "flower-cpu@%h"], env, tmp_path / "cpu.log"
        ),
        lewis_process(["flower", "--port", str(port)], env, tmp_path / "flower.log"),
    ):
        wait_for(
            lambda: any(n.startswith("flower-cpu@") for n in worker_names(celery_app)),
            60,
            what="the worker",
        )
        wait_for(flower_sees_worker, 60, what="Flower listing the worker")

        # (and docker-compose's Flower healthcheck passes on it, and fails where none listens)
        def healthcheck(on: int) -> int:
            code = flower_healthcheck_code(on)
            return subprocess.run(
                [sys.executable, "-c", code], capture_output=True, timeout=20
            ).returncode

        assert healthcheck(port) == 0
        assert healthcheck(free_port()) != 0

        def run_and_list() -> bool:
            handles = submit_many("lewis.bench.noop", [((), {})] * 5)
            wait_all(handles, timeout=60)
            tasks = api("/api/tasks?limit=1000")
            done = {
                tid
                for tid, t in tasks.items()
                if t.get("state") == "SUCCESS"
                and t.get("name") == "lewis.bench.noop"
                and str(t.get("worker", "")).startswith("flower-cpu@")
            }
            return {h.id for h in handles} <= done

        # When tasks run, then Flower's API lists them as succeeded on our worker
        # (events are switched on a moment after Flower starts: tasks sent before may be missed)
        wait_for(run_and_list, 60, interval=1, what="Flower's API listing our tasks")
