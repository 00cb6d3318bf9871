"""Worker profiles: how an io, cpu or control worker (and the beat, and Flower) is started.

Each profile turns settings into a ``celery worker`` command line. ``lewis worker PROFILE``
and ``python -m workers PROFILE`` (the thin top-level entry) exec it, so signals (warm shutdown on SIGTERM) reach Celery
directly. Extra arguments pass through to ``celery worker`` unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..domain.cores import usable_cores
from ..errors import ConfigError
from .config import Settings

APP = "lewis_tasks.infra.celery_app"
BEAT_ENTRY = "beat_schedule"  # the top-level module with the periodic jobs, as data
PROFILES = ("io", "cpu", "control")


def _cores() -> int:
    return usable_cores()  # the container's CPU quota, not the host's cores


def worker_options(profile: str, settings: Settings) -> list[str]:
    """The ``celery worker`` options of ``profile`` (no executable, no extra arguments)."""
    w = settings.workers
    if profile == "io":
        # Network-bound: tasks wait on the process's one event loop; threads keep many in
        # flight per process (prefork would give one per child). Chosen by bench/ (BENCHMARKS.md).
        pool = w.io_pool
        if pool == "threads":
            concurrency = w.io_concurrency or settings.performance.thread_pool_size
        elif pool == "prefork":
            concurrency = w.io_concurrency or _cores()
        else:
            concurrency = 1
        opts = [
            "-Q",
            "io",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "--prefetch-multiplier",
            str(w.io_prefetch_multiplier),
        ]
    elif profile == "cpu":
        max_kib = settings.memory.max_heap_size // 1024
        # one child per core, never more than performance.max_workers
        children = w.cpu_concurrency or min(_cores(), settings.performance.max_workers)
        if children > settings.performance.max_workers:
            raise ConfigError(
                f"setting workers.cpu_concurrency: {children} exceeds "
                f"performance.max_workers={settings.performance.max_workers}"
            )
        opts = [
            "-Q",
            "cpu",
            "-P",
            "prefork",
            "-c",
            str(children),
            "--prefetch-multiplier",
            "1",
            "-O",
            "fair",
            "--max-tasks-per-child",
            str(w.cpu_max_tasks_per_child),
            "--max-memory-per-child",
            str(max_kib),
        ]
    elif profile == "control":
        # Threads, not solo: the consumer must answer pings while a beat job runs.
        opts = [
            "-Q",
            "control",
            "-P",
            "threads",
            "-c",
            str(max(2, w.control_concurrency)),
            "--prefetch-multiplier",
            "1",
        ]
    else:
        raise ValueError(f"unknown worker profile {profile!r} (profiles: {', '.join(PROFILES)})")
    return opts


def worker_argv(
    profile: str, settings: Settings, extra: Sequence[str] = (), python: str | None = None
) -> list[str]:
    """The full command line that starts a ``profile`` worker."""
    argv = [
        python or sys.executable,
        "-m",
        "celery",
        "-A",
        APP,
        "worker",
        *worker_options(profile, settings),
        "--without-gossip",
        "--without-mingle",
        "-l",
        "INFO",
    ]
    if not any(a in ("-n", "--hostname") or a.startswith("--hostname=") for a in extra):
        argv += ["-n", f"{profile}@%h"]  # stable: the container's or host's name (%h)
    return argv + list(extra)


def beat_argv(
    settings: Settings, extra: Sequence[str] = (), python: str | None = None
) -> list[str]:
    """``python -m beat_schedule``: the top-level jobs module hands its jobs to the app and
    runs ``celery beat`` (infra never imports the jobs)."""
    return [
        python or sys.executable,
        "-m",
        BEAT_ENTRY,
        "-l",
        "INFO",
        "--scheduler",
        "lewis_tasks.infra.beat:LeaderScheduler",
        *extra,
    ]


def flower_argv(
    settings: Settings,
    port: int,
    extra: Sequence[str] = (),
    python: str | None = None,
    address: str = "127.0.0.1",
) -> list[str]:
    return [
        python or sys.executable,
        "-m",
        "celery",
        "-A",
        APP,
        "flower",
        f"--address={address}",
        f"--port={port}",
        *extra,
    ]


def flower_env(settings: Settings) -> dict[str, str]:
    """Basic auth through FLOWER_BASIC_AUTH: a password on argv would show in `ps`."""
    if settings.stack.flower_user and settings.stack.flower_password:
        return {
            "FLOWER_BASIC_AUTH": f"{settings.stack.flower_user}:{settings.stack.flower_password}"
        }
    return {}
