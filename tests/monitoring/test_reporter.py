"""The worker-side reporter: batched writes, counts kept through a Redis outage, real workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from lewis_tasks.domain.metrics import parse_series
from lewis_tasks.infra.metrics_store import MetricStore
from lewis_tasks.infra.redis_server import EmbeddedRedis
from lewis_tasks.infra.reporter import MetricsReporter
from tests.conftest import stack_env
from tests.support.procs import lewis_process, wait_for, worker_names


def totals_by(store: MetricStore, metric: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for series, value in store.totals()[0].items():
        name, labels = parse_series(series)
        if name == metric:
            out[labels.get(label, "")] = out.get(labels.get(label, ""), 0) + value
    return out


def test_counts_survive_a_redis_outage_and_are_written_once_it_returns(tmp_path: Path) -> None:
    # Given a reporter writing to a Redis of its own
    server = EmbeddedRedis(data_dir=tmp_path, appendonly=True).start()  # keeps data over restart
    client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=0.5)
    store = MetricStore(client, 1, 60, 100)
    reporter = MetricsReporter(
        lambda: store, "w@test", interval=1, report_interval=0.2, retention=60
    )
    try:
        for _ in range(3):
            reporter.task_started("a", "t", "cpu", None)
            reporter.task_finished("a", "t", "cpu", "SUCCESS")
        assert reporter.flush()
        # When Redis goes away while tasks keep finishing
        server.stop()
        for i in range(5):
            reporter.task_started(f"b{i}", "t", "cpu", None)
            reporter.task_finished(f"b{i}", "t", "cpu", "FAILURE" if i == 0 else "SUCCESS")
        assert not reporter.flush()
        reporter.count("received", "t", "cpu", 2)
        assert not reporter.flush()
        # Then, once it is back, nothing counted meanwhile is lost or doubled
        server.start()
        assert reporter.flush()
        assert totals_by(store, "celery_task_succeeded_total", "name") == {"t": 7}
        assert totals_by(store, "celery_task_failed_total", "name") == {"t": 1}
        assert totals_by(store, "celery_task_received_total", "queue") == {"cpu": 2}
        assert store.totals()[1] and sum(h.count for h in store.totals()[1].values()) == 8
    finally:
        reporter.stop()
        server.stop()


def test_a_revoked_task_is_counted_from_the_context_celery_sends(
    tmp_path: Path, redis_url: str, lewis_settings: Any, celery_app: Any
) -> None:
    from celery import signals
    from celery.app.task import Context

    from lewis_tasks.infra import reporter as module

    # Given this process's reporter (and whatever the session's store holds already: the
    # expired beat jobs of earlier tests count as revoked too)
    store = MetricStore(redis.Redis.from_url(lewis_settings.broker.url), 1, 3600, 1000)
    before = {by: totals_by(store, "celery_task_revoked_total", by) for by in ("name", "queue")}
    mine = module.install("revoke@test", system=False, start=False)
    try:
        # When Celery's worker reports a revoked request (sender: the task; request: its Context)
        context = Context(
            {"id": "r1", "task": "lewis.bench.noop", "delivery_info": {"routing_key": "cpu"}}
        )
        signals.task_revoked.send(
            sender=celery_app.tasks["lewis.bench.noop"],
            request=context,
            terminated=False,
            signum=None,
            expired=False,
        )
        # Then it is counted under the task's name and queue
        assert mine.flush()
        for by, counted in (("name", "lewis.bench.noop"), ("queue", "cpu")):
            after = totals_by(store, "celery_task_revoked_total", by)
            grown = {
                k: v - before[by].get(k, 0) for k, v in after.items() if v != before[by].get(k, 0)
            }
            assert grown == {counted: 1}
    finally:
        module.uninstall()


def test_a_refused_request_counts_as_rejected_not_failed(
    lewis_settings: Any, celery_app: Any
) -> None:
    from celery import signals

    from lewis_tasks.errors import InvalidInput, OutOfScope
    from lewis_tasks.infra import reporter as module

    mine = module.install("refuse@test", system=False, start=False)
    task = celery_app.tasks["lewis.bench.noop"]
    store = MetricStore(redis.Redis.from_url(lewis_settings.broker.url), 1, 3600, 1000)

    def counts() -> tuple[float, float]:
        return (
            totals_by(store, "celery_task_rejected_total", "name").get(task.name, 0),
            totals_by(store, "celery_task_failed_total", "name").get(task.name, 0),
        )

    before = counts()
    try:
        # When one run is refused (out of scope) and another fails for a reason of ours
        for task_id, error in (
            ("a", OutOfScope("10.0.0.1 is out of scope")),
            ("b", RuntimeError("bug")),
        ):
            signals.task_postrun.send(
                sender=task,
                task_id=task_id,
                task=task,
                args=(),
                kwargs={},
                retval=error,
                state="FAILURE",
            )
        assert mine.flush()
        # Then the refusal is a rejection and only the bug a failure (error-rate alerts)
        after = counts()
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
        assert isinstance(OutOfScope("x"), InvalidInput)
    finally:
        module.uninstall()


@pytest.mark.slow
def test_real_workers_report_every_task_in_a_few_batched_writes(
    redis_url: str, tmp_path: Path, lewis_settings: Any, celery_app: Any, worker_redis: redis.Redis
) -> None:
    from lewis_tasks.producer.base import submit_many, wait_all

    for key in worker_redis.scan_iter("lewis:metrics:*"):
        worker_redis.delete(key)
    env = stack_env(
        redis_url,
        tmp_path,
        LEWIS_DATABASE_URL=lewis_settings.database.url,
        LEWIS_MONITORING_METRICS_INTERVAL="1",
        LEWIS_MONITORING_REPORT_INTERVAL="0.5",
    )
    # Given a prefork cpu worker with two children and a threads io worker
    with (
        lewis_process(["worker", "cpu", "-c", "2", "-n", "rep-cpu@%h"], env, tmp_path / "cpu.log"),
        lewis_process(["worker", "io", "-c", "4", "-n", "rep-io@%h"], env, tmp_path / "io.log"),
    ):
        wait_for(
            lambda: {n.split("@")[0] for n in worker_names(celery_app)} >= {"rep-cpu", "rep-io"},
            60,
            what="both workers",
        )
        worker_redis.config_resetstat()
        # When 300 no-ops run on each queue
        handles = submit_many("lewis.bench.noop", [((), {})] * 300)
        handles += submit_many("lewis.bench.io_noop", [((), {})] * 300, pack=1)
        wait_all(handles, timeout=120)
        store = MetricStore(worker_redis, 1, 3600, 1000)
        # Then every start and success is counted per queue and worker, in the store
        wait_for(
            lambda: (
                totals_by(store, "celery_task_succeeded_total", "queue") == {"cpu": 300, "io": 300}
            ),
            30,
            what="succeeded counts",
        )
        assert totals_by(store, "celery_task_started_total", "queue") == {"cpu": 300, "io": 300}
        # (a prefork worker counts receipts in its main process, which flushes on its own timer)
        wait_for(
            lambda: (
                sorted(totals_by(store, "celery_task_received_total", "hostname").values())
                == [300, 300]
            ),
            20,
            what="received counts per worker",
        )
        # the producer (this process) counted what it sent, on its own timer
        wait_for(
            lambda: (
                totals_by(store, "celery_task_sent_total", "name")
                == {"lewis.bench.noop": 300, "lewis.bench.io_noop": 300}
            ),
            20,
            what="sent",
        )
        runtime = store.stats("celery_task_runtime", "10m")
        wait = store.stats("celery_task_queue_wait_time", "10m")
        assert runtime.count == 600 and wait.count == 600 and 0 < wait.p50 < 60
        # and the writes were batched: a counter written per task would cost 600 tasks × 3
        # events × 2 hashes = 3,600 HINCRBYFLOATs (only the metric store uses that command)
        calls = worker_redis.info("commandstats").get("cmdstat_hincrbyfloat", {}).get("calls", 0)
        assert 0 < calls < 1200, calls
        # and the main processes sampled themselves and their pool children
        wait_for(
            lambda: (
                len(
                    {
                        parse_series(s)[1]["hostname"]
                        for s in store.latest()
                        if parse_series(s)[0] == "lewis_worker_rss_bytes"
                    }
                )
                == 2
            ),
            20,
            what="worker gauges",
        )
        procs = {
            parse_series(s)[1]["hostname"].split("@")[0]: v
            for s, (v, _) in store.latest().items()
            if parse_series(s)[0] == "lewis_worker_processes"
        }
        assert procs["rep-cpu"] >= 3 and procs["rep-io"] >= 1


def test_reporting_off_installs_no_reporter(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lewis_tasks.infra import config, reporter

    previous = config.get_settings()
    config.set_settings(
        config.load_settings(
            env={"LEWIS_MONITORING_REPORTING": "false", "LEWIS_STACK_HOME": str(tmp_path)}
        )
    )
    try:
        reporter.uninstall()
        reporter.start_worker_reporter(SimpleNamespace(hostname="off@h"))
        reporter.start_child_reporter()
        reporter.note_sent("t", "cpu")
        assert reporter.current() is None
    finally:
        config.set_settings(previous)


def test_a_producer_whose_settings_name_no_broker_starts_no_reporter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An app given its URLs by hand (the benches), in a process whose own settings find no
    broker (no LEWIS_BROKER_URL, no stack running): its sends have nowhere to be reported, so
    no reporter starts and nothing warns about an unreachable Redis."""
    from lewis_tasks.infra import config, reporter

    previous = config.get_settings()
    config.set_settings(config.load_settings(env={"LEWIS_STACK_HOME": str(tmp_path)}))
    try:
        reporter.uninstall()
        assert config.get_settings().broker.url == ""
        reporter.note_sent("t", "io")
        assert reporter.current() is None
        assert "metrics: Redis unavailable" not in caplog.text
    finally:
        config.set_settings(previous)


def test_a_task_that_never_waits_is_timed_in_cpu_time_others_in_wall_time(
    lewis_settings: Any, celery_app: Any
) -> None:
    """A packable io task's plain body (io_noop) reports its thread's CPU time: its runtime
    sizes packs, and run side by side with the pool's other threads its wall time would be
    mostly a wait for the GIL. Every other task reports wall time."""
    import time

    from celery import signals

    from lewis_tasks.infra import reporter as module

    host = f"clock-{time.monotonic_ns()}@test"
    mine = module.install(host, system=False, start=False)
    store = MetricStore(redis.Redis.from_url(lewis_settings.broker.url), 1, 3600, 1000)
    try:
        for name in ("lewis.bench.io_noop", "lewis.bench.noop"):
            task = celery_app.tasks[name]
            signals.task_prerun.send(
                sender=task, task_id=f"{name}-1", task=task, args=(), kwargs={}
            )
            time.sleep(0.2)  # waiting, as behind other threads: no CPU
            signals.task_postrun.send(
                sender=task,
                task_id=f"{name}-1",
                task=task,
                args=(),
                kwargs={},
                retval=None,
                state="SUCCESS",
            )
        assert mine.flush()
        runtimes = {}
        for series, histogram in store.totals()[1].items():
            metric, labels = parse_series(series)
            if metric == "celery_task_runtime" and labels.get("hostname") == host:
                runtimes[labels["name"]] = histogram.total / 1e6  # microseconds
        assert runtimes["lewis.bench.noop"] >= 0.2
        assert runtimes["lewis.bench.io_noop"] < 0.05
    finally:
        module.uninstall()
