"""The embedded stack: one supervisor process that runs everything ``lewis up`` promises.

With no ``LEWIS_BROKER_URL`` it starts a private redis-server (AOF, noeviction, a random
password) under the stack home; then migrates the database and starts the io, cpu and control
workers, beat and Flower as child processes. It writes ``<home>/stack.json`` (mode 0600: it
holds the broker password) so every other ``lewis`` command finds the stack by itself.

Children die with the supervisor (PR_SET_PDEATHSIG), a child that exits on its own is
restarted with backoff, and SIGINT/SIGTERM shut everything down warm, in order: Flower and
beat, then workers (they finish or hand back their tasks), then Redis. Nothing is left behind.

The embedded redis-server is restarted the same way when it dies, on the same port, with the
same password and AOF directory: the URL every process holds stays valid, workers and beat
reconnect by themselves (transport.py), and what the AOF had reaches them again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LewisError
from .config import SCALED_QUEUES, Settings, read_stack_file, redact_url, stack_file
from .redis_server import EmbeddedRedis, free_port, killed_with_parent, pid_alive

log = logging.getLogger(__name__)

REDIS_START_TIMEOUT = 60.0  # seconds: a large AOF takes a while to load before PING answers
RESTART_CAP = 30.0  # seconds: the longest wait before restarting a process that died
HEALTHY_AFTER = 60.0  # seconds: a process up this long has recovered; its backoff starts over


@dataclass
class Backoff:
    """When to restart a process that died: 1 s, 2 s, 4 s … up to ``cap`` while it keeps dying,
    and from 1 s again once a run lasted ``healthy_after`` seconds.

    Without the reset, a worker that crashed five times in a week waited the full cap after
    every later crash, for the life of the stack. ``clock`` is injectable for tests.
    """

    cap: float = RESTART_CAP
    healthy_after: float = HEALTHY_AFTER
    clock: Callable[[], float] = time.monotonic
    restarts: int = 0  # consecutive restarts since the last healthy run
    started_at: float | None = None
    due: float | None = None  # when the pending restart may happen; None: none pending

    def started(self) -> None:
        self.started_at = self.clock()
        self.due = None

    def died(self) -> float:
        """Record a death once; the delay before the restart (``due`` holds its time)."""
        now = self.clock()
        if self.due is not None:
            return max(0.0, self.due - now)
        if self.started_at is not None and now - self.started_at >= self.healthy_after:
            self.restarts = 0
        delay = min(self.cap, 2.0 ** min(self.restarts, 16))
        self.restarts += 1
        self.due = now + delay
        return delay

    def ready(self) -> bool:
        """True once a recorded death's delay has passed."""
        return self.due is not None and self.clock() >= self.due


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    backoff: Backoff = field(default_factory=Backoff)
    profile: str | None = None  # io/cpu/control for workers
    node: str | None = None  # the worker's Celery node name
    retiring: bool = False  # drained by a scale-down: not restarted, dropped once it exits

    @property
    def group(self) -> str:
        """What it is: a worker's profile (io-2 is an io worker) or the child's name."""
        return self.profile or self.name

    @property
    def restarts(self) -> int:
        return self.backoff.restarts

    def start(self) -> None:
        log_file = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=killed_with_parent,
            )
        finally:
            log_file.close()
        self.backoff.started()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Stack:
    settings: Settings
    python: str = sys.executable
    redis: EmbeddedRedis | None = None
    children: list[Child] = field(default_factory=list)
    redis_backoff: Backoff = field(default_factory=Backoff)
    broker_url: str = ""
    flower_url: str = ""
    monitor_url: str = ""
    worker_extra: list[str] = field(default_factory=list)  # more `celery worker` options
    pool: Any = None  # the local scaling pool (local_pool.LocalPool) once started
    _stopping: bool = False
    _env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.settings.home

    def check_not_running(self) -> None:
        info = read_stack_file(self.home)
        if info and pid_alive(int(info.get("supervisor_pid", 0))):
            raise ConfigError(
                f"a stack is already running from {self.home} (pid "
                f"{info['supervisor_pid']}); `lewis down` stops it"
            )

    def start(self, ready_timeout: float = 60.0, on_step: Callable[[str], None] = print) -> None:
        """Start every part, wait until all workers answer pings, write stack.json."""
        from .profiles import beat_argv, flower_argv, flower_env

        self.home.mkdir(parents=True, exist_ok=True)
        self.check_not_running()
        logs = self.home / "logs"
        logs.mkdir(exist_ok=True)
        self.broker_url = self.settings.broker.url
        if not self.broker_url:
            self.redis = EmbeddedRedis(self.home / "redis", password=secrets.token_urlsafe(24))
            self.redis.start()
            self.redis_backoff.started()
            self.broker_url = self.redis.url
            on_step(
                f"redis    {redact_url(self.broker_url)}  (pid {self.redis.process.pid}, "  # type: ignore[union-attr]
                f"data {self.home / 'redis'}, AOF on, noeviction)"
            )
        env = {
            **os.environ,
            "LEWIS_BROKER_URL": self.broker_url,
            "LEWIS_DATABASE_URL": self.settings.database.url,
            "LEWIS_STACK_HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
        }
        self._migrate(env)
        on_step(
            f"database {redact_url(self.settings.database.url)}  (migrated, sample CVE feed loaded)"
        )
        port = self.settings.stack.flower_port or free_port()
        self.flower_url = f"http://127.0.0.1:{port}"
        self._env = env
        for profile in ("io", "cpu", "control"):
            self.add_worker(profile, name=profile)
            for _ in range(1, self._first_workers(profile)):
                self.add_worker(profile)  # io-2, io-3…
        specs = [("beat", beat_argv(self.settings, python=self.python), env)]
        specs.append(
            (
                "flower",
                flower_argv(self.settings, port, python=self.python),
                {**env, **flower_env(self.settings)},
            )
        )
        specs.append(("monitor", self._monitor_argv(), env))
        for name, argv, child_env in specs:
            child = Child(name, argv, child_env, logs / f"{name}.log")
            child.start()
            self.children.append(child)
        self._write_stack_file(ready=False)
        self._wait_ready(ready_timeout)
        self._start_pool()
        for child in self.children:
            on_step(f"{child.name:<8} pid {child.pid}  log {child.log_path}")
        on_step(f"flower   {self.flower_url}")
        on_step(f"monitor {self.monitor_url}")
        self._write_stack_file(ready=True)

    def _first_workers(self, profile: str) -> int:
        """How many ``profile`` workers the stack starts with: the scaling floor
        (scaling.io_min_workers: one per core by default), at least one; control: one."""
        if profile not in SCALED_QUEUES:
            return 1
        return max(1, getattr(self.settings.scaling, f"{profile}_min_workers"))

    def add_worker(self, profile: str, name: str | None = None) -> Child:
        """Start one more ``profile`` worker (io, io-2, io-3…: the first free name), supervised
        like the first; the local scaling pool calls it."""
        from .profiles import worker_argv

        if name is None:
            taken = {c.name for c in self.children}
            name = next(
                n
                for n in (profile, *(f"{profile}-{i}" for i in range(2, 10_000)))
                if n not in taken
            )
        node = f"{name}@{socket.gethostname()}"  # stable: a restarted worker keeps its series
        argv = worker_argv(
            profile, self.settings, extra=["-n", node, *self.worker_extra], python=self.python
        )
        child = Child(
            name, argv, self._env, self.home / "logs" / f"{name}.log", profile=profile, node=node
        )
        child.start()
        self.children.append(child)
        if self.pool is not None:
            self._write_stack_file(ready=True)
        return child

    def _start_pool(self) -> None:
        """The local scaling pool (infra/local_pool.py), when scaling is on."""
        if not self.settings.scaling.enabled:
            return
        import redis

        from .local_pool import LocalPool

        client = redis.Redis.from_url(
            self.broker_url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self.pool = LocalPool(
            client,
            lambda: self.children,
            self.add_worker,
            self._drain,
            cap=self.settings.performance.max_workers,
        )

    def _drain(self, node: str) -> bool:
        """``lewis_drain`` to one worker node; True when it answered."""
        from celery import Celery

        from .broker import broadcast
        from .local_pool import DRAIN_REPLY_TIMEOUT

        probe = Celery("lewis-scaler", broker=self.broker_url)
        try:
            replies = broadcast(
                probe, "lewis_drain", timeout=DRAIN_REPLY_TIMEOUT, destination=[node], limit=1
            )
        except Exception as exc:  # the broker away: the caller falls back to SIGTERM
            log.warning("lewis_drain to %s not sent: %s", node, exc)
            return False
        finally:
            probe.close()
        return node in replies

    def _monitor_argv(self) -> list[str]:
        """`lewis monitor` on loopback (Prometheus /metrics and the dashboard, issue 14)."""
        port = self.settings.monitoring.monitor_port or free_port()
        self.monitor_url = f"http://127.0.0.1:{port}"
        return [
            self.python,
            "-m",
            "lewis_tasks.cli",
            "monitor",
            "--address",
            "127.0.0.1",
            "--port",
            str(port),
        ]

    def _migrate(self, env: dict[str, str]) -> None:
        """Schema to the newest revision, and the shipped sample CVE feed (a no-op when present)."""
        for step, args in (
            ("database migration", ["db", "upgrade"]),
            ("sample vulnerability import", ["vulns", "import", "--sample"]),
        ):
            result = subprocess.run(
                [self.python, "-m", "lewis_tasks.cli", *args],
                env=env,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise LewisError(f"{step} failed: {result.stderr.strip()[-500:]}")

    def _wait_ready(self, timeout: float) -> None:
        from celery import Celery

        from .broker import wait_for_workers

        def children_alive() -> None:
            for child in self.children:
                if child.process is not None and child.process.poll() is not None:
                    raise LewisError(
                        f"{child.name} exited at start (code "
                        f"{child.process.returncode}); see {child.log_path}"
                    )

        probe = Celery("lewis-probe", broker=self.broker_url)
        want = {"io", "cpu", "control"}
        try:
            wait_for_workers(
                probe,
                lambda names: want <= {n.split("@")[0].split("-")[0] for n in names},
                timeout,
                check=children_alive,
            )
        except TimeoutError:
            raise LewisError(
                f"workers did not answer within {timeout:.0f}s; see {self.home / 'logs'}"
            ) from None
        finally:
            probe.close()

    def _write_stack_file(self, ready: bool) -> None:
        data: dict[str, Any] = {
            "supervisor_pid": os.getpid(),
            "home": str(self.home),
            "broker_url": self.broker_url,
            "embedded_redis": self.redis is not None,
            "database_url": self.settings.database.url,
            "flower_url": self.flower_url,
            "monitor_url": self.monitor_url,
            "processes": self._pids(),
            "started_at": time.time(),
            "ready": ready,
        }
        path = stack_file(self.home)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)

    def _pids(self) -> dict[str, int | None]:
        """Every process of the stack by name, the embedded redis-server first."""
        pids: dict[str, int | None] = {}
        if self.redis is not None and self.redis.process is not None:
            pids["redis"] = self.redis.process.pid
        return {**pids, **{c.name: c.pid for c in self.children}}

    def supervise(self, poll: float = 0.5, on_ready: Callable[[], None] | None = None) -> None:
        """Block until a stop is requested, restarting children that die (with backoff).

        ``on_ready`` runs once SIGINT/SIGTERM request a warm stop: a Ctrl-C right after the
        "ready" line it prints is a stop like any other, not a KeyboardInterrupt."""

        def request_stop(signum: int, _frame: Any) -> None:
            self._stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        if on_ready is not None:
            on_ready()
        while not self._stopping:
            self._tend_redis()
            for child in list(self.children):
                self._tend(child)
            if self.pool is not None:
                self.pool.tend()
            time.sleep(poll)

    def _tend(self, child: Child) -> None:
        """Restart ``child`` if it died and its backoff delay has passed; a retired (drained)
        worker that exited leaves the stack instead."""
        if child.alive() or child.process is None:
            return
        if child.retiring:
            log.warning("%s drained and exited (code %s)", child.name, child.process.returncode)
            self.children.remove(child)
            self._write_stack_file(ready=True)
            return
        if not child.backoff.ready():
            if child.backoff.due is None:
                delay = child.backoff.died()
                log.warning(
                    "%s exited (code %s); restarting in %.0fs",
                    child.name,
                    child.process.returncode,
                    delay,
                )
            return
        child.start()
        self._write_stack_file(ready=True)

    def _tend_redis(self) -> None:
        """Restart the embedded redis-server on its port, password and data if it died."""
        redis = self.redis
        if redis is None or (redis.process is not None and redis.process.poll() is None):
            return
        backoff = self.redis_backoff
        if not backoff.ready():
            if backoff.due is None:
                code = redis.process.returncode if redis.process is not None else None
                delay = backoff.died()
                log.error(
                    "the embedded redis-server exited (code %s); restarting it on port %d in %.0fs",
                    code,
                    redis.port,
                    delay,
                )
            return
        try:
            redis.start(timeout=REDIS_START_TIMEOUT)
        except LewisError as exc:  # the port taken meanwhile, a damaged AOF: try again later
            backoff.started()  # a failed start is a run that died at once
            redis.process = None
            log.error("the embedded redis-server did not restart: %s", exc)
            return
        backoff.started()
        log.warning(
            "the embedded redis-server is back on port %d (pid %d)",
            redis.port,
            redis.process.pid,  # type: ignore[union-attr]
        )
        self._write_stack_file(ready=True)

    def stop(self, on_step: Callable[[str], None] = print) -> None:
        """Warm shutdown in order; SIGKILL whatever outlives its grace period."""
        grace = self.settings.workers.shutdown_timeout + 10
        order = [["flower", "beat", "monitor"], ["io", "cpu", "control"]]
        for group in order:
            members = [c for c in self.children if c.group in group and c.alive()]
            for child in members:
                child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            deadline = time.monotonic() + grace
            for child in members:
                try:
                    child.process.wait(max(0.1, deadline - time.monotonic()))  # type: ignore[union-attr]
                except subprocess.TimeoutExpired:
                    on_step(f"{child.name} did not stop in {grace:.0f}s; killing it")
                    _kill_group(child.process.pid)  # type: ignore[union-attr]
                    child.process.wait()  # type: ignore[union-attr]
                _kill_group(child.process.pid)  # type: ignore[union-attr]  # stray grandchildren
        if self.redis is not None:
            self.redis.stop()
        with contextlib.suppress(FileNotFoundError):
            info = read_stack_file(self.home)
            if info and info.get("supervisor_pid") == os.getpid():
                stack_file(self.home).unlink()
        on_step("stack stopped")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def stop_detached(home: Path, timeout: float = 90.0) -> int | None:
    """SIGTERM the supervisor recorded in ``home``'s stack.json and wait for it; its pid, or None."""
    info = read_stack_file(home)
    if not info:
        return None
    pid = int(info.get("supervisor_pid", 0))
    if not pid or not pid_alive(pid):
        stack_file(home).unlink(missing_ok=True)
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return pid
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    raise LewisError(f"stack supervisor pid {pid} did not stop within {timeout:.0f}s")
