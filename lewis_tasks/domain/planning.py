"""How work is cut and how long it may take: pure arithmetic over plain values.

HTTP: how long load tests may take (a batch's chunks: ``httpplan``), and the caps they are checked against
before anything is enqueued. Scans: how many ports a chunk holds.

Both sides need the same numbers: the producer to cut a batch into chunks and refuse an
over-cap load test, the tasks to bound their own run. Redis has no real acks, so every time
limit here stays below the broker's visibility timeout (the worker refuses to start
otherwise); a load test longer than that leaves room for is refused with the reason named.

Nothing here reads settings: ``lewis_tasks.infra.planning`` hands the values in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import InvalidInput
from .httpplan import SLACK  # a batch's chunk plan (url budget, chunk size) lives there

BARRIER_LEAD = 0.5  # seconds between the last part arriving and the common start
DRAIN = 2.0  # loadgen gives in-flight requests this long after the deadline
HARD_GAP = 5.0  # hard time limit after the soft one


def check_batch_size(count: int, max_urls: int) -> None:
    """InvalidInput unless 1 ≤ ``count`` ≤ ``max_urls`` (``http.max_urls``)."""
    if count < 1:
        raise InvalidInput("an HTTP batch needs at least one URL")
    if count > max_urls:
        raise InvalidInput(f"{count} URLs is over the cap http.max_urls={max_urls}")


@dataclass(frozen=True)
class LoadtestBudget:
    """Seconds a load-test part may spend: barrier, the run, its drain and the slack."""

    barrier: float
    max_duration: float  # the longest run allowed: loadtest.max_duration or the broker's room

    def time_limits(self, duration: float | None) -> tuple[float, float]:
        """(soft, hard) time limit of a part running ``duration`` s (None: up to the maximum)."""
        run = self.max_duration if duration is None else min(duration, self.max_duration)
        soft = self.barrier + BARRIER_LEAD + run + DRAIN + SLACK
        return soft, soft + HARD_GAP


def loadtest_budget(
    *, barrier_timeout: float, max_duration: float, visibility_timeout: float
) -> LoadtestBudget:
    """The budget of a part; the hard limit of the longest run stays a second below
    ``visibility_timeout``."""
    room = visibility_timeout - 1 - HARD_GAP - SLACK - DRAIN - BARRIER_LEAD - barrier_timeout
    return LoadtestBudget(barrier_timeout, min(max_duration, room))


class LoadtestCaps(Protocol):
    """The ``loadtest.*`` caps a run is checked against (``LoadtestSettings`` fits)."""

    @property
    def max_duration(self) -> float: ...
    @property
    def max_concurrency(self) -> int: ...
    @property
    def max_rate(self) -> int: ...
    @property
    def max_requests(self) -> int: ...
    @property
    def max_workers(self) -> int: ...
    @property
    def max_body_bytes(self) -> int: ...


def _check_numbers(concurrency: Any, duration: Any, requests: Any, rate: Any, workers: Any) -> None:
    for name, value in (("concurrency", concurrency), ("workers", workers), ("requests", requests)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInput(f"{name} must be a whole number, not {value!r}")
    for name, number in (("duration", duration), ("rate", rate)):
        if number is not None and (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not math.isfinite(number)
        ):
            raise InvalidInput(
                f"{name} must be a number of {'seconds' if name == 'duration' else 'requests/s'}, "
                f"not {number!r}"
            )


def check_loadtest(
    lt: LoadtestCaps,
    budget: LoadtestBudget,
    visibility_timeout: float,
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
    _check_numbers(concurrency, duration, requests, rate, workers)
    from .loadgen import LOAD_METHODS  # aiohttp: only when a load test is checked

    if method.upper() not in LOAD_METHODS:
        raise InvalidInput(f"method {method!r} is not one of {', '.join(sorted(LOAD_METHODS))}")
    if workers < 1 or workers > lt.max_workers:
        raise InvalidInput(
            f"workers {workers} is outside 1..{lt.max_workers} (loadtest.max_workers)"
        )
    if concurrency < 1 or concurrency > lt.max_concurrency:
        raise InvalidInput(
            f"concurrency {concurrency} is outside 1..{lt.max_concurrency} "
            "(loadtest.max_concurrency)"
        )
    if concurrency < workers:
        raise InvalidInput(
            f"concurrency {concurrency} cannot be split over {workers} workers "
            "(each needs at least 1)"
        )
    if duration is None and requests is None:
        raise InvalidInput("give a duration or a number of requests")
    if duration is not None:
        if duration <= 0 or duration > lt.max_duration:
            raise InvalidInput(
                f"duration {duration:g}s is outside (0, {lt.max_duration:g}s] "
                "(loadtest.max_duration)"
            )
        if duration > budget.max_duration:
            raise InvalidInput(
                f"duration {duration:g}s does not fit: broker.visibility_timeout="
                f"{visibility_timeout}s leaves {max(0.0, budget.max_duration):g}s "
                f"for a run after the start barrier (loadtest.barrier_timeout={budget.barrier:g}s)"
            )
    elif budget.max_duration <= 0:
        raise InvalidInput(f"no load test fits in broker.visibility_timeout={visibility_timeout}s")
    if requests is not None:
        if requests < 1 or requests > lt.max_requests:
            raise InvalidInput(
                f"requests {requests} is outside 1..{lt.max_requests} (loadtest.max_requests)"
            )
        if requests < workers:
            raise InvalidInput(f"requests {requests} cannot be split over {workers} workers")
    if rate is not None and (rate <= 0 or rate > lt.max_rate):
        raise InvalidInput(f"rate {rate:g}/s is outside (0, {lt.max_rate}/s] (loadtest.max_rate)")
    from .loadgen import check_request_options

    check_request_options(
        method=method.upper(),
        headers=headers,
        body=body,
        timeout=timeout,
        ramp=ramp,
        duration=duration,
        max_body=lt.max_body_bytes,
    )


def split(total: int, parts: int) -> list[int]:
    """``total`` cut into ``parts`` whole shares that differ by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# --- scans --------------------------------------------------------------------------------

# Shares of tasks.soft_time_limit. Chunks are sized so their worst-case port scan takes at
# most SCAN_SHARE of it; scan plus identification must end by WORK_SHARE (identification is
# cut short there); the rest is for resolving, the database and the broker.
SCAN_SHARE = 0.5
WORK_SHARE = 0.8

# Fair shares (issue 21): an io process runs as many chunks at once as it has slots, all
# sharing its one event loop, so they finish together in waves; a worker added mid-scan only
# gets what is still queued (measured: 10 of the 28 left of a 50-chunk scan). Cut into at
# least SCAN_WAVES waves of every io slot online, a scan keeps all but one wave queued, for
# whoever joins (BENCHMARKS.md, "Fleet").
SCAN_WAVES = 8
MIN_CHUNK_PORTS = 2048  # smaller, a fast scan pays more in chunk rows, results and messages
# A scan that fits in one wave of the slots online is taken whole at once: no chunk stays
# queued for a worker that joins, so the waves buy nothing, and each chunk costs its io process
# ~6 ms of CPU (its task, rows, result, events; BENCHMARKS.md, issue 18.4). Such a scan is cut
# only into this many chunks per io process online (so a process that took more than its share
# still leaves the others work), at most ``chunk_ports`` each.
PROCESS_SHARES = 2


def io_slots(io_pool: str, io_concurrency: int, thread_pool_size: int) -> int:
    """How many chunk tasks one io worker process may run at once."""
    if io_pool == "threads":
        return max(1, io_concurrency or thread_pool_size)
    return 1  # prefork: each child is a process of its own; solo: one at a time


@dataclass(frozen=True)
class ScanLimits:
    """What a chunk is sized from: ``scan.*`` values, the task's soft limit, the io slots."""

    chunk_ports: int
    concurrency: int
    timeout: float
    retries: int
    soft_time_limit: float
    io_slots: int


def max_chunk_ports(
    seconds: float, *, concurrency: int, timeout: float, retries: int, rate: float | None = None
) -> int:
    """The most ports a chunk may hold so that scanning it takes at most ``seconds``.

    Worst case: every port is filtered, so each takes ``retries + 1`` attempts of ``timeout``
    seconds, ``concurrency`` at a time; with a ``rate`` (connects/s) every attempt also waits
    for a permit. Both costs are added (an upper bound), plus one timeout for the last wave.
    """
    attempts = retries + 1
    per_port = attempts * timeout / max(1, concurrency)
    if rate:
        per_port += attempts / rate
    usable = seconds - timeout
    if usable <= 0:
        return 1
    return max(1, math.floor(usable / per_port))


def chunk_ports_for(
    limits: ScanLimits,
    rate: float | None,
    *,
    hosts: int = 0,
    ports: int = 0,
    slots_online: int = 0,
    waves: int = SCAN_WAVES,
    processes_online: int = 0,
) -> int:
    """Ports per chunk: ``chunk_ports``, less if the worst case would outlive the budget,
    and less again so a scan of ``hosts`` × ``ports`` makes ``waves`` waves of the io slots
    online (``slots_online``; none known: one worker's), never under :data:`MIN_CHUNK_PORTS`.
    A scan that fits in one wave of those slots is cut into :data:`PROCESS_SHARES` chunks per
    io process online instead (``processes_online``; 0, not known: the waves), never more
    than the first size allows.

    The worst case assumes every slot of the io process scans at once (each then gets its
    share of ``concurrency``) and every port is filtered.
    """
    share = max(1, limits.concurrency // limits.io_slots)
    fits = max_chunk_ports(
        limits.soft_time_limit * SCAN_SHARE,
        concurrency=share,
        timeout=limits.timeout,
        retries=limits.retries,
        rate=rate,
    )
    most = size = max(1, min(limits.chunk_ports, fits))
    if hosts and ports and waves:  # 0: off (bench/fleet.py's A/B)
        slots = max(slots_online, limits.io_slots)
        per_host = math.ceil(waves * slots / hosts)  # chunks each host's ports are cut into
        size = min(size, max(MIN_CHUNK_PORTS, math.ceil(ports / per_host)))
        if processes_online and hosts * math.ceil(ports / size) <= slots:  # one wave
            per_host = math.ceil(PROCESS_SHARES * processes_online / hosts)
            size = min(most, max(size, math.ceil(ports / per_host)))
    return size


# A chunk's deadline (issue 21, item 5): from its planned work, not a fixed share of the soft
# limit, so a stuck or oversized chunk ends (with what settled, marked timed out) when its
# plan is overrun, not minutes later; the soft limit's WORK_SHARE stays the cap.
CHUNK_FLOOR = 10.0  # seconds: never less (resolving, the database, a busy machine)
PLAN_MARGIN = 2.0  # the plan is the network's worst case; the margin is for the machine's
IDENTIFY_WAITS = 3  # a silent open port holds identification for its banner and two probe waves


@dataclass(frozen=True)
class ChunkWork:
    """What one scan chunk will do: its ports, connects in flight, and the ``scan.*`` values.

    ``rate_sharers``: how many chunks share the host's rate limit (the bucket is per host);
    0 = not known, and a rate-limited chunk then gets the cap.
    """

    ports: int
    concurrency: int
    timeout: float
    retries: int
    banner_timeout: float
    identify: bool = True
    rate: float | None = None
    rate_sharers: int = 0


def planned_chunk_seconds(work: ChunkWork) -> float:
    """The worst case of ``work`` on the network: every port filtered (``retries + 1``
    timeouts each, ``concurrency`` at a time), every connect waiting for a rate permit shared
    with ``rate_sharers`` chunks, then one round of identification of silent ports. Infinite
    when a rate is shared with chunks not counted."""
    attempts = work.retries + 1
    seconds = math.ceil(work.ports / max(1, work.concurrency)) * attempts * work.timeout
    if work.rate:
        if work.rate_sharers < 1:
            return math.inf
        seconds += work.ports * attempts * work.rate_sharers / work.rate
    if work.identify:
        seconds += IDENTIFY_WAITS * work.banner_timeout
    return seconds


def chunk_deadline(work: ChunkWork, soft_time_limit: float) -> float:
    """Seconds a scan chunk may run: its planned work × :data:`PLAN_MARGIN`, at least
    :data:`CHUNK_FLOOR`, at most ``soft_time_limit`` × :data:`WORK_SHARE`."""
    planned = PLAN_MARGIN * planned_chunk_seconds(work)
    return min(soft_time_limit * WORK_SHARE, max(CHUNK_FLOOR, planned))
