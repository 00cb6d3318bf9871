"""What every benchmark needs: a private Redis, worker processes of LEWIS and of bare Celery,
readiness through the broker, completion counting, medians."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Celery

from lewis_tasks.infra.redis_server import EmbeddedRedis

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "bench" / "logs"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The same interpolated percentile `lewis bench` reports (one definition for both)."""
    from lewis_tasks.domain.benchstats import percentile as interpolated

    return interpolated(values, q) if values else float("nan")


@contextlib.contextmanager
def private_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server for this run only, configured as `lewis up` runs it (AOF everysec)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lewis-bench-") as tmp:
        server = EmbeddedRedis(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


def db_url(server: EmbeddedRedis, db: int) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{db}"


def lewis_env(broker: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEWIS_")}
    env.update(
        {
            "LEWIS_BROKER_URL": broker,
            "LEWIS_STACK_HOME": str(home),
            "LEWIS_DATABASE_URL": f"sqlite:///{home / 'lewis.db'}",
            "LEWIS_MONITORING_PERFORMANCE_LOGGING": "false",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def processes(
    argvs: Sequence[Sequence[str]], env: dict[str, str], name: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start each argv in its own process group; kill the groups on the way out."""
    LOGS.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for i, argv in enumerate(argvs):
            log = open(LOGS / f"{name}-{i}.log", "wb")  # noqa: SIM115  (closed with the process)
            procs.append(
                subprocess.Popen(
                    list(argv),
                    env=env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def lewis_worker_argv(profile: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lewis_tasks.cli", "worker", profile, *extra]


def baseline_worker_argv(*extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.baseline_app",
        "worker",
        "-l",
        "WARNING",
        *extra,
    ]


def wait_workers(app: Celery, count: int, timeout: float = 60.0) -> None:
    from lewis_tasks.infra.broker import wait_for_workers

    wait_for_workers(app, lambda names: len(names) >= count, timeout)


def wait_results(
    client: redis.Redis, baseline_keys: int, count: int, timeout: float, poll: float = 0.002
) -> float:
    """Block until ``count`` new result keys exist (a result is written when a task ends);
    returns the monotonic time it happened. DBSIZE is O(1), so polling costs the server nothing."""
    deadline = time.monotonic() + timeout
    target = baseline_keys + count
    while True:
        if client.dbsize() >= target:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {client.dbsize() - baseline_keys}/{count} tasks finished in {timeout}s"
            )
        time.sleep(poll)


def repeat(runs: int, func: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    return [func() for _ in range(runs)]


def interleaved(sides: Sequence[T], run: int) -> list[T]:
    """``sides`` in run ``run``'s order: AB BA AB … (ABC CBA … for more), so drift over a
    run hits every side alike."""
    return list(sides) if run % 2 == 0 else list(reversed(sides))
