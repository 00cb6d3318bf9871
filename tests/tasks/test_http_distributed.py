"""Real io worker processes: a load test spread over two, one part on each, started together;
and a worker whose own scope refuses what the producer let through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lewis_tasks.producer.http import submit_http_batch, submit_loadtest
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


def test_a_real_io_worker_refuses_what_its_scope_does_not_allow(
    redis_url: str, tmp_path: Path, lewis_settings: Any, celery_app: Any, serve: ServerThread
) -> None:
    # Given a `lewis worker io` process allowed 127.0.0.2 only, and a server on 127.0.0.1 it
    # could reach: the producer's own scope (all of loopback) lets the URLs through, so only
    # the worker's checks stand between them and the server
    inside = serve.start("app", "127.0.0.2")
    outside = serve.start("app", "127.0.0.1")
    env = stack_env(
        redis_url,
        tmp_path,
        LEWIS_DATABASE_URL=lewis_settings.database.url,
        LEWIS_SCOPE_ALLOW="127.0.0.2/32",
    )
    with lewis_process(["worker", "io", "-c", "4", "-n", "narrow@%h"], env, tmp_path / "io.log"):
        wait_for(
            lambda: any(n.startswith("narrow@") for n in worker_names(celery_app)),
            60,
            what="the io worker",
        )
        before = sum(outside.hits.values())
        # When a batch of plain-http GETs and HEADs (the fetcher's lean lane) asks for both
        handle = submit_http_batch(
            [
                f"{inside.url}/",
                f"http://127.0.0.1:{outside.port}/",
                {"url": f"http://[::ffff:127.0.0.1]:{outside.port}/", "method": "HEAD"},
                f"{inside.url}/to?url=http://127.0.0.1:{outside.port}/",
            ]
        )
        summary = handle.wait(timeout=60)
        rows = handle.result()
    # Then the allowed URL is fetched, every other is refused by the worker, and the server
    # outside the scope sees nothing
    assert rows[0]["status"] == 200
    assert [r["error_class"] for r in rows[1:]] == ["out_of_scope"] * 3, rows
    assert "127.0.0.1 is out of scope" in rows[1]["error"]
    assert summary["ok"] == 1 and summary["failed"] == 3
    assert sum(outside.hits.values()) == before
