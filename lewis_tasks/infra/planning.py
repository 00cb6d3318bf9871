"""Planning under the settings: ``lewis_tasks.domain.planning`` with the values handed in.

The arithmetic (chunk sizes, time budgets, load-test caps) is pure and lives in the domain;
these wrappers only read the ``Settings`` fields it needs, so producers, the CLI and tasks
keep one call each.
"""

from __future__ import annotations

from typing import Any

from ..domain import planning as plan
from ..domain.httpplan import FLUSH_TICK, SLACK, HttpBatchPlan, HttpLimits, plan_http_batch
from ..domain.planning import (
    BARRIER_LEAD,
    DRAIN,
    HARD_GAP,
    MIN_CHUNK_PORTS,
    SCAN_SHARE,
    WORK_SHARE,
    LoadtestBudget,
    split,
)
from ..domain.targets import ScanChunk
from .config import Settings

# Read at each call of chunk_ports_for, so bench/fleet.py's A/B can set it to 0 (off).
SCAN_WAVES = plan.SCAN_WAVES
PROCESS_SHARES = plan.PROCESS_SHARES


def http_limits(settings: Settings) -> HttpLimits:
    """The numbers an HTTP batch plan reads from ``settings``."""
    return HttpLimits(
        settings.http.timeout,
        settings.http.chunk_size,
        settings.network.max_connections,
        settings.tasks.soft_time_limit,
    )


def batch_plan(settings: Settings, count: int, timeout: float | None = None) -> HttpBatchPlan:
    """The one plan of a batch of ``count`` URLs (:func:`~lewis_tasks.domain.httpplan.plan_http_batch`)."""
    return plan_http_batch(count, timeout, http_limits(settings))


def url_budget(settings: Settings, timeout: float | None = None) -> float:
    """Seconds one URL may take (every hop and retry): ``timeout`` or ``http.timeout``."""
    return http_limits(settings).url_budget(timeout)


def chunk_seconds(settings: Settings) -> float:
    """How long one chunk task may fetch: its soft time limit less the slack to persist."""
    return http_limits(settings).chunk_seconds


def chunk_size(settings: Settings, budget: float) -> int:
    """URLs per chunk when each may take ``budget`` seconds."""
    return http_limits(settings).chunk_size(budget)


def check_batch_size(settings: Settings, count: int) -> None:
    """InvalidInput unless 1 ≤ ``count`` ≤ ``http.max_urls``."""
    plan.check_batch_size(count, settings.http.max_urls)


def loadtest_budget(settings: Settings) -> LoadtestBudget:
    """The budget of a part under ``settings`` (``loadtest.*``, ``broker.visibility_timeout``)."""
    return plan.loadtest_budget(
        barrier_timeout=settings.loadtest.barrier_timeout,
        max_duration=settings.loadtest.max_duration,
        visibility_timeout=settings.broker.visibility_timeout,
    )


def check_loadtest(
    settings: Settings,
    *,
    concurrency: int,
    duration: float | None,
    requests: int | None,
    rate: float | None,
    workers: int,
    method: str,
    headers: Any = None,
    body: Any = None,
    timeout: Any = None,
    ramp: Any = None,
) -> None:
    """InvalidInput naming the cap (a ``loadtest.*`` setting) or the parameter that is off."""
    plan.check_loadtest(
        settings.loadtest,
        loadtest_budget(settings),
        settings.broker.visibility_timeout,
        concurrency=concurrency,
        duration=duration,
        requests=requests,
        rate=rate,
        workers=workers,
        method=method,
        headers=headers,
        body=body,
        timeout=timeout,
        ramp=ramp,
    )


def io_slots(settings: Settings) -> int:
    """How many chunk tasks one io worker process may run at once."""
    w = settings.workers
    return plan.io_slots(w.io_pool, w.io_concurrency, settings.performance.thread_pool_size)


def scan_limits(settings: Settings) -> plan.ScanLimits:
    """The ``scan.*`` values, soft time limit and io slots a chunk is sized from."""
    s = settings.scan
    return plan.ScanLimits(
        chunk_ports=s.chunk_ports,
        concurrency=s.concurrency,
        timeout=s.timeout,
        retries=s.retries,
        soft_time_limit=settings.tasks.soft_time_limit,
        io_slots=io_slots(settings),
    )


def chunk_ports_for(
    settings: Settings,
    rate: float | None,
    *,
    hosts: int = 0,
    ports: int = 0,
    slots_online: int = 0,
    processes_online: int = 0,
) -> int:
    """Ports per chunk (see ``domain.planning.chunk_ports_for``) under ``settings``."""
    return plan.chunk_ports_for(
        scan_limits(settings),
        rate,
        hosts=hosts,
        ports=ports,
        slots_online=slots_online,
        waves=SCAN_WAVES,
        processes_online=processes_online,
    )


def chunk_deadline(
    settings: Settings, part: ScanChunk, concurrency: int, rate: float | None, identify: bool
) -> float:
    """Seconds the scan chunk ``part`` may run (``domain.planning.chunk_deadline``): from its
    ports at ``concurrency`` connects in flight, ``scan.*`` and ``tasks.soft_time_limit``. A
    chunk knows neither the other chunks of its host nor their share of the per-host rate, so
    a rate-limited chunk gets the cap."""
    s = settings.scan
    work = plan.ChunkWork(
        ports=part.port_count,
        concurrency=concurrency,
        timeout=s.timeout,
        retries=s.retries,
        banner_timeout=s.banner_timeout,
        identify=identify,
        rate=rate,
    )
    return plan.chunk_deadline(work, settings.tasks.soft_time_limit)


__all__ = [
    "chunk_deadline",
    "http_limits",
    "batch_plan",
    "url_budget",
    "chunk_seconds",
    "chunk_size",
    "check_batch_size",
    "LoadtestBudget",
    "loadtest_budget",
    "check_loadtest",
    "split",
    "BARRIER_LEAD",
    "DRAIN",
    "SLACK",
    "HARD_GAP",
    "FLUSH_TICK",
    "SCAN_SHARE",
    "WORK_SHARE",
    "io_slots",
    "scan_limits",
    "chunk_ports_for",
    "SCAN_WAVES",
    "PROCESS_SHARES",
    "MIN_CHUNK_PORTS",
]
