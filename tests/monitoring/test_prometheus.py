"""`lewis monitor` under a real Prometheus: scraped on loopback, values read back through the
query API, the output accepted by promtool; stale answers (never a 500) when Redis is down."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from lewis_tasks.domain.metrics import MetricBatch, series_key
from lewis_tasks.infra.broker import WorkerPing
from lewis_tasks.infra.collector import collect
from lewis_tasks.infra.metrics_store import MetricStore
from lewis_tasks.infra.redis_server import EmbeddedRedis, free_port
from tests.conftest import stack_env
from tests.support.procs import lewis_process, wait_for

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Debian's prometheus package is not installed (scripts/ci-deps installs it)",
)


EXPORTER_LINT = (
    "celery_active_worker_count non-histogram and non-summary metrics should not "
    'have "_count" suffix'
)


def seed(client: redis.Redis) -> None:
    """What two workers' reporters and one collection would have written."""
    store = MetricStore(client, 1, 3600, 100)
    batch = MetricBatch()
    for host, n in (("w1@h", 3), ("w2@h", 2)):
        s = series_key(
            "celery_task_succeeded_total", {"name": "t", "hostname": host, "queue": "cpu"}
        )
        batch.inc(1, s, "celery_task_succeeded_total", n)
        for i in range(n):
            batch.observe(
                1,
                series_key("celery_task_runtime", {"name": "t", "hostname": host}),
                "celery_task_runtime",
                0.01 * (i + 1),
            )
        batch.gauge(
            series_key("lewis_worker_last_report_timestamp", {"hostname": host}),
            "lewis_worker_last_report_timestamp",
            1.0,
            9e9,
        )
    batch.inc(
        1,
        series_key("celery_task_failed_total", {"name": "t", "hostname": "w1@h", "queue": "cpu"}),
        "celery_task_failed_total",
        1,
    )
    store.write(batch)
    client.lpush("cpu", *["m"] * 7)
    collect(
        None,
        store,
        ping_timeout=0.1,  # type: ignore[arg-type]
        pinger=lambda: [WorkerPing("w1@h", 1.0, ("cpu",)), WorkerPing("w2@h", 1.0, ("cpu",))],
    )


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode()


def sample(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start!r} in:\n{text}")


@pytest.fixture
def monitor(tmp_path: Path, redis_url: str, worker_redis: redis.Redis) -> Iterator[str]:
    for key in worker_redis.scan_iter("lewis:metrics:*"):
        worker_redis.delete(key)
    worker_redis.delete("cpu")
    seed(worker_redis)
    port = free_port()
    env = stack_env(
        redis_url,
        tmp_path,
        LEWIS_MONITORING_METRICS_INTERVAL="1",
        LEWIS_MONITORING_REPORT_INTERVAL="0.5",
    )
    with lewis_process(["monitor", "--port", str(port)], env, tmp_path / "monitor.log"):
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(url), 30, what="lewis monitor")
        yield url
    worker_redis.delete("cpu")


def _up(url: str) -> bool:
    try:
        return get(f"{url}/metrics", 1)[0] == 200
    except OSError:
        return False


def test_metrics_use_celery_exporter_names(monitor: str) -> None:
    status, text = get(f"{monitor}/metrics")
    assert status == 200
    assert sample(text, 'celery_task_succeeded_total{hostname="w1@h",name="t",queue="cpu"}') == 3
    assert sample(text, 'celery_task_failed_total{hostname="w1@h"') == 1
    assert sample(text, 'celery_task_runtime_count{hostname="w1@h",name="t"}') == 3
    assert sample(text, 'celery_task_runtime_bucket{hostname="w1@h",le="+Inf",name="t"}') == 3
    assert sample(text, 'celery_queue_length{queue_name="cpu"}') == 7
    assert sample(text, 'celery_active_worker_count{queue_name="cpu"}') == 2
    assert sample(text, 'celery_worker_up{hostname="w2@h"}') == 1
    assert sample(text, "lewis_metrics_stale ") == 0
    assert "# TYPE celery_task_runtime histogram" in text


@needs_prometheus
def test_promtool_accepts_the_output(monitor: str) -> None:
    _, text = get(f"{monitor}/metrics")
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=text.encode(),  # type: ignore[list-item]
        capture_output=True,
        timeout=30,
    )
    problems = [line for line in (check.stdout + check.stderr).decode().splitlines() if line]
    # celery-exporter's own name breaks one naming lint (a gauge ending in _count); we keep
    # the name so its dashboards work, and accept exactly that lint and nothing else
    allowed = {EXPORTER_LINT}
    assert set(problems) <= allowed, problems
    assert "error while linting" not in " ".join(problems)
    without = (
        "\n".join(line for line in text.splitlines() if "celery_active_worker_count" not in line)
        + "\n"
    )
    clean = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=without.encode(),  # type: ignore[list-item]
        capture_output=True,
        timeout=30,
    )
    assert clean.returncode == 0, clean.stdout.decode() + clean.stderr.decode()


@needs_prometheus
def test_a_real_prometheus_scrapes_it_and_answers_queries(monitor: str, tmp_path: Path) -> None:
    port = free_port()
    target = monitor.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: lewis\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",  # type: ignore[list-item]
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:

        def query(expr: str) -> list[Any]:
            try:
                _, body = get(f"{api}/query?query={urllib.parse.quote(expr)}", 3)
            except OSError:
                return []
            return json.loads(body)["data"]["result"]

        wait_for(
            lambda: query('up{job="lewis"}') and query('up{job="lewis"}')[0]["value"][1] == "1",
            60,
            what="Prometheus scraping lewis monitor",
        )
        wait_for(lambda: bool(query("celery_queue_length")), 30, what="a scraped queue length")
        assert float(query('celery_queue_length{queue_name="cpu"}')[0]["value"][1]) == 7
        succeeded = query('sum(celery_task_succeeded_total{name="t"})')
        assert float(succeeded[0]["value"][1]) == 5
        assert float(query("sum(celery_task_runtime_count)")[0]["value"][1]) == 5
        p = query("histogram_quantile(0.5, sum by (le) (celery_task_runtime_bucket))")
        assert 0.005 < float(p[0]["value"][1]) <= 0.025
        assert float(query("sum(celery_worker_up)")[0]["value"][1]) == 2
    finally:
        proc.terminate()
        proc.wait(30)


def test_metrics_answer_last_values_and_stale_when_redis_is_down(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "r", appendonly=False)
    (tmp_path / "r").mkdir()
    server.start()
    seed(redis.Redis.from_url(server.url))
    port = free_port()
    env = {
        "LEWIS_BROKER_URL": server.url,
        "LEWIS_STACK_HOME": str(tmp_path),
        "LEWIS_MONITORING_METRICS_INTERVAL": "1",
        "LEWIS_MONITORING_REPORT_INTERVAL": "0.5",
        "LEWIS_BROKER_CONNECT_TIMEOUT": "0.5",
    }
    try:
        with lewis_process(["monitor", "--port", str(port)], env, tmp_path / "monitor.log"):
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: _up(url), 30, what="lewis monitor")
            _, text = get(f"{url}/metrics")
            assert sample(text, "lewis_metrics_stale ") == 0
            server.stop()
            wait_for(
                lambda: "lewis_metrics_stale 1.0" in get(f"{url}/metrics", 10)[1],
                30,
                what="a stale answer",
            )
            status, text = get(f"{url}/metrics", 10)
            assert status == 200
            assert sample(text, 'celery_queue_length{queue_name="cpu"}') == 7
            snap = json.loads(get(f"{url}/api/snapshot", 10)[1])
            assert snap["stale"] is True and snap["queues"]["cpu"]["ready"] == 7
    finally:
        server.stop()
