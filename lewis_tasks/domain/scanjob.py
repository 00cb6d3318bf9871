"""The pure parts of a distributed scan job: chunk sizing, one chunk's work, the findings.

* :func:`max_chunk_ports` (kept in :mod:`.planning`, which sizes chunks without loading the
  scanner) — how many ports one chunk may hold so that its worst case (every port silent,
  each connect retried, every attempt waiting for a rate permit) still fits the seconds it
  is given. A chunk task that outlives its time limit is killed and redelivered,
  so sizing is what keeps a filtered target from hanging a worker.
* :func:`run_chunk` — the connect scan of one address's ports (:func:`.portscan.scan_ports`),
  then service identification of the open ones (:mod:`.services`), both inside one deadline:
  ports still unnamed when it comes are reported ``unknown`` (probe ``"deadline"``) instead of
  making the task overrun. Under a rate limit every identification connect takes a permit too.
* :func:`assess_ports` — one ranked finding per open port, CVEs looked up per product through
  a caller-supplied function (the caller decides how lookups are cached).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from ..errors import TransientError
from .connectloop import Turns
from .findings import Finding, assess, rank_findings
from .planning import max_chunk_ports
from .portscan import ConnectLimiter, PortScanProgress, PortScanResult, scan_ports
from .scope import Scope
from .services import (
    PROBE_COUNT,
    ServiceInfo,
    guess_name,
    identify_service,
    name_erlang_nodes,
)
from .vulns import CveRecord, find_cves

# Connections one identification may open: the banner wait, then the light probes.
IDENTIFY_CONNECTS = 1 + PROBE_COUNT
_MIN_WAIT = 0.005  # never re-ask a rate limiter sooner than this
STOP_GRACE = 2.0  # a connect loop looks at its stop check every 0.15 s: this is plenty


@dataclass(frozen=True)
class ChunkOutcome:
    """What one chunk found: every port's state, and the service on each open one."""

    scan: PortScanResult
    services: tuple[ServiceInfo, ...]
    unidentified: tuple[int, ...]  # open ports the deadline left unnamed
    seconds: float
    timed_out: bool = False  # the deadline stopped the port scan: ports not settled unscanned

    def to_dict(self) -> dict[str, object]:
        return {
            "scan": self.scan.to_dict(),
            "services": [s.to_dict() for s in self.services],
            "unidentified": list(self.unidentified),
            "seconds": round(self.seconds, 4),
            **({"timed_out": True} if self.timed_out else {}),
        }


async def run_chunk(
    address: str,
    ports: Iterable[int],
    *,
    scope: Scope,
    deadline: float,
    concurrency: int = 4096,
    timeout: float = 1.0,
    retries: int = 1,
    limiter: ConnectLimiter | None = None,
    identify: bool = True,
    banner_timeout: float = 2.0,
    identify_concurrency: int = 256,
    on_progress: Callable[[PortScanProgress], None] | None = None,
    progress_interval: float = 0.5,
    executor: Executor | None = None,
    cancelled: Callable[[], bool] | None = None,
    turns: Turns | None = None,
) -> ChunkOutcome:
    """Scan ``ports`` of ``address``, then identify the open ones, all before ``deadline``.

    ``deadline`` is a ``time.monotonic()`` instant. A port scan still running then stops with
    what has settled (the outcome is ``timed_out``; its open ports are listed unnamed);
    identification is cut short the same way. Only a scan that does not stop within
    :data:`STOP_GRACE` of the deadline raises TransientError. ``cancelled`` stops the port
    scan early (what settled is kept) and skips identification. ``turns``: the process's
    :class:`~.connectloop.Turns` (chunks scanned side by side take turns launching connects).
    """
    started = time.monotonic()
    stop = _Stop(deadline, cancelled)
    try:
        result = await asyncio.wait_for(
            scan_ports(
                address,
                ports,
                scope=scope,
                concurrency=concurrency,
                timeout=timeout,
                retries=retries,
                limiter=limiter,
                on_progress=on_progress,
                progress_interval=progress_interval,
                executor=executor,
                cancelled=stop,
                turns=turns,
            ),
            max(0.0, deadline - started) + STOP_GRACE,
        )
    except TimeoutError:
        raise TransientError(
            f"scan of {address}: the port scan did not stop within {STOP_GRACE:g} s of its "
            f"{deadline - started:.1f} s budget"
        ) from None
    if stop.timed_out:  # not cancelled by the user: the deadline ended it
        result = replace(result, cancelled=False)
    services: tuple[ServiceInfo, ...] = ()
    unnamed: tuple[int, ...] = ()
    if identify and result.open and not result.cancelled:
        services = await identify_before(
            address,
            result.open,
            scope=scope,
            deadline=deadline,
            banner_timeout=banner_timeout,
            concurrency=identify_concurrency,
            limiter=limiter,
        )
        unnamed = tuple(s.port for s in services if s.probe == "deadline")
    return ChunkOutcome(result, services, unnamed, time.monotonic() - started, stop.timed_out)


class _Stop:
    """The connect loop's stop check: the user's cancel, or the deadline (remembered apart)."""

    def __init__(self, deadline: float, cancelled: Callable[[], bool] | None) -> None:
        self.deadline, self.cancelled, self.timed_out = deadline, cancelled, False

    def __call__(self) -> bool:
        if self.cancelled is not None and self.cancelled():
            return True
        if time.monotonic() >= self.deadline:
            self.timed_out = True
        return self.timed_out


async def identify_before(
    address: str,
    ports: Sequence[int],
    *,
    scope: Scope,
    deadline: float,
    banner_timeout: float,
    concurrency: int,
    limiter: ConnectLimiter | None = None,
) -> tuple[ServiceInfo, ...]:
    """:func:`.services.identify_service` on each port, ``concurrency`` at once, until ``deadline``.

    Ports not identified by then come back ``unknown`` with probe ``"deadline"``.
    """
    host = str(scope.check_address(address))
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(port: int) -> ServiceInfo:
        async with gate:
            if limiter is not None:
                await take_permits(limiter, IDENTIFY_CONNECTS)
            return await identify_service(
                host, port, banner_timeout=banner_timeout, probe_timeout=banner_timeout
            )

    tasks = {port: asyncio.ensure_future(one(port)) for port in sorted(set(ports))}
    left = deadline - time.monotonic()
    if left > 0:
        await asyncio.wait(tasks.values(), timeout=left)
    found: list[ServiceInfo] = []
    for port, task in tasks.items():
        if task.done() and not task.cancelled() and task.exception() is None:
            found.append(task.result())
        else:
            task.cancel()
            found.append(ServiceInfo(port, guess_name(port), probe="deadline"))
    await asyncio.gather(*tasks.values(), return_exceptions=True)  # let cancelled ones close
    return tuple(name_erlang_nodes(found))


async def take_permits(limiter: ConnectLimiter, count: int) -> None:
    """Wait until ``limiter`` granted ``count`` connects (its blocking calls off the loop)."""
    need = count
    while need > 0:
        granted, wait = await asyncio.to_thread(limiter.acquire, need)
        need -= max(0, int(granted))
        if need > 0:
            await asyncio.sleep(max(_MIN_WAIT, float(wait)))


@dataclass(frozen=True)
class OpenPort:
    """An open port as the scan recorded it: where, and the service found on it."""

    address: str
    service: ServiceInfo
    hostname: str | None = None


def assess_ports(
    ports: Iterable[OpenPort], records_for: Callable[[str | None], Sequence[CveRecord]]
) -> list[Finding]:
    """One finding per open port, ranked; ``records_for(product)`` gives the candidate CVEs."""
    findings = []
    for item in ports:
        info = item.service
        records = records_for(info.product) if info.product and info.version else ()
        findings.append(
            assess(
                item.address, info, find_cves(info.product, info.version, records), item.hostname
            )
        )
    return rank_findings(findings)


__all__ = [
    "IDENTIFY_CONNECTS",
    "max_chunk_ports",
    "ChunkOutcome",
    "run_chunk",
    "identify_before",
    "take_permits",
    "OpenPort",
    "assess_ports",
]
