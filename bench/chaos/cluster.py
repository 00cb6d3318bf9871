"""The real stack the experiments break: a broker redis-server we control, ``lewis worker`` and
``lewis beat`` subprocesses, and this process pointed at them as the producer.

Shared with the kill tests (tests/test_reliability.py): the short-recovery settings and the
worker launcher live here once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from lewis_tasks.infra.redis_server import EmbeddedRedis
from tests.conftest import stack_env
from tests.support.procs import kill_group, lewis_process, wait_for

# A killed worker's task comes back after the visibility timeout: keep it short here.
FAST_RECOVERY = {
    "LEWIS_BROKER_VISIBILITY_TIMEOUT": "6",
    "LEWIS_TASKS_TIME_LIMIT": "5",
    "LEWIS_TASKS_SOFT_TIME_LIMIT": "4",
    "LEWIS_TASKS_MAX_REDELIVERIES": "2",
}

# A pool child that dies mid-task may be reported lost only after Celery's worker_lost_wait
# (10 s; billiard's _join_exited_workers); with a hard limit under that, a loaded machine
# sometimes ended the task as TimeLimitExceeded first (seen once in CI). Experiments with
# children that die use limits above it.
LOST_CHILD = {
    **FAST_RECOVERY,
    "LEWIS_TASKS_TIME_LIMIT": "15",
    "LEWIS_TASKS_SOFT_TIME_LIMIT": "14",
    "LEWIS_BROKER_VISIBILITY_TIMEOUT": "16",
}

# io workers of the chaos cluster run scans too: a silent listener holds a chunk for two
# banner timeouts (4 s here, time for a kill to land mid-chunk), well inside the time limit.
# The visibility timeout is the cluster's (every worker must agree: a worker with another one
# refuses to start, infra/fleet.py), so it is the cpu workers' (LOST_CHILD) here too.
SCANNING = {
    **FAST_RECOVERY,
    "LEWIS_BROKER_VISIBILITY_TIMEOUT": LOST_CHILD["LEWIS_BROKER_VISIBILITY_TIMEOUT"],
    "LEWIS_TASKS_TIME_LIMIT": "9",
    "LEWIS_TASKS_SOFT_TIME_LIMIT": "8",
    "LEWIS_SCAN_BANNER_TIMEOUT": "2",
    # three chunks per scan: a chord whose merge runs on the cpu queue (a scan of one
    # chunk merges in place on its io worker, and the cpu kill would find no merge)
    "LEWIS_SCAN_CHUNK_PORTS": "16",
}

TASKS_MODULE = "tests.support.killtasks"


class BrokerRedis(EmbeddedRedis):
    """The broker, an "external" redis-server (AOF on, as `lewis up` runs it) we can break."""

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        """On the same port and data directory: the AOF brings the queues back."""
        self.start(timeout=20.0)

    def outage(self, seconds: float) -> None:
        """kill -9, down for ``seconds``, then restarted."""
        self.kill9()
        time.sleep(seconds)
        self.restart()

    def stall(self, seconds: float) -> None:
        """SIGSTOP for ``seconds``, then SIGCONT: connections stay open, nothing answers."""
        self.pause()
        time.sleep(seconds)
        self.resume()

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)


def broker_env(broker_url: str, home: Path, **extra: str) -> dict[str, str]:
    """The test stack's environment (tests/conftest.py) on ``broker_url`` itself (db 1)."""
    return stack_env(broker_url, home, **{**FAST_RECOVERY, **extra})


@contextlib.contextmanager
def producing_for(env: dict[str, str]) -> Iterator[Any]:
    """Point this process (the producer) at the stack in ``env``, yielding the Celery app;
    put back the settings it had on the way out (the tests share the process)."""
    from lewis_tasks.infra import config

    previous = config.get_settings()
    try:
        yield _use_settings(config.load_settings(env=env))
    finally:
        _use_settings(previous)


def _use_settings(settings: Any) -> Any:
    from lewis_tasks.infra import cache, config, redis_client
    from lewis_tasks.infra.celery_app import app, configure_app, release_result_subscriptions

    release_result_subscriptions()
    config.set_settings(settings)
    redis_client.reset_clients()
    cache.reset_cache()
    return configure_app(app, settings)


def worker(
    profile: str,
    name: str,
    env: dict[str, str],
    logs: Path,
    extra: Sequence[str] = (),
    cwd: Path | None = None,
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``lewis worker PROFILE`` with the chaos tasks loaded, named ``name@host``, logging to
    ``logs/name.log``; started from ``cwd`` (another "host"), else from the checkout."""
    return lewis_process(
        ["worker", profile, "-I", TASKS_MODULE, "-n", f"{name}@%h", *extra],
        env,
        logs / f"{name}.log",
        **({"cwd": cwd} if cwd is not None else {}),
    )


def answering(app: Any, timeout: float = 1.0) -> set[str]:
    """Names (before the @) of the workers that answer a ping through the broker now."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from lewis_tasks.infra.broker import live_workers

    try:
        return {n.split("@")[0] for n in live_workers(app, timeout)}
    except (OSError, OperationalError, RedisConnectionError):  # the broker is down: nobody
        # answers (anything else is a bug of ours and must not read as 'no worker yet')
        return set()


def wait_answering(app: Any, names: set[str], timeout: float) -> None:
    wait_for(lambda: names <= answering(app), timeout, what=f"workers {sorted(names)}")


def pool_children(proc: subprocess.Popen[bytes]) -> list[int]:
    """Pids of the prefork pool children under a ``lewis worker cpu`` process."""
    try:
        return [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def group_pids(proc: subprocess.Popen[bytes]) -> set[int]:
    return {proc.pid, *pool_children(proc)}


@dataclass
class Respawning:
    """A worker the experiment kills and starts again, as a supervisor would."""

    profile: str
    name: str
    env: dict[str, str]
    logs: Path
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def current(self) -> str:
        return f"{self.name}{self.generation}"

    def start(self) -> subprocess.Popen[bytes]:
        self.generation += 1
        self.process = self._stack.enter_context(
            worker(self.profile, self.current, self.env, self.logs)
        )
        return self.process

    def kill(self) -> None:
        if self.process is not None:
            kill_group(self.process)

    def close(self) -> None:
        self._stack.close()


def until(predicate: Any, patience: float, interval: float = 0.1) -> float | None:
    """The (wall-clock) time ``predicate`` first held, or None after ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        time.sleep(interval)
    return None


@contextlib.contextmanager
def broker(home: Path) -> Iterator[BrokerRedis]:
    server = BrokerRedis(home / "redis")
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.resume()  # a paused server cannot take the SIGTERM that stops it
        server.stop()
