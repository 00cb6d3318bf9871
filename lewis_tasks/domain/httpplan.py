"""How an HTTP batch is cut into chunks and how long it may take: one plan for the CLI (how long
to wait), the producer (which chunks to send) and the task (each URL's budget, its deadline).

A chunk task may fetch for its soft time limit less :data:`SLACK` (to persist and return); a
URL may take ``timeout`` (every hop and retry, at most ``http.timeout``); a chunk holds
``http.chunk_size`` URLs, fewer if a chunk of URLs that all stall (each using its whole budget,
``network.max_connections`` at a time) would outrun its time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidInput

SLACK = 5.0  # start-up, session, persisting and returning, beyond the work itself
FLUSH_TICK = 0.2  # a URL overruns its budget by at most the fetcher's watchdog tick (0.1 s)


@dataclass(frozen=True)
class HttpLimits:
    """The settings a batch plan reads (``http.*``, ``network.max_connections``,
    ``tasks.soft_time_limit``), as plain numbers."""

    url_timeout: float  # http.timeout: the most one URL may take
    chunk_cap: int  # http.chunk_size
    max_connections: int  # network.max_connections: fetches in flight per process
    soft_time_limit: float  # tasks.soft_time_limit of a chunk task

    @property
    def chunk_seconds(self) -> float:
        """How long one chunk task may fetch: its soft time limit less the slack to persist."""
        return max(1.0, self.soft_time_limit - SLACK)

    def url_budget(self, timeout: float | None = None) -> float:
        """Seconds one URL may take: ``timeout`` or ``http.timeout``; InvalidInput past it."""
        budget = self.url_timeout if timeout is None else float(timeout)
        if not 0 < budget <= self.url_timeout:
            raise InvalidInput(
                f"timeout {budget:g}s is outside (0, {self.url_timeout:g}s] (http.timeout)"
            )
        return min(budget, self.chunk_seconds)

    def chunk_size(self, budget: float) -> int:
        """URLs per chunk when each may take ``budget`` seconds."""
        waves = max(1, math.floor(self.chunk_seconds / (budget + FLUSH_TICK)))
        return max(1, min(self.chunk_cap, self.max_connections * waves))


@dataclass(frozen=True)
class HttpBatchPlan:
    """A batch of ``count`` URLs: each URL's budget, the chunk size and the chunks' starts."""

    count: int
    budget: float  # seconds per URL
    size: int  # URLs per chunk
    chunk_seconds: float  # how long each chunk task may fetch
    max_connections: int

    @property
    def starts(self) -> range:
        """The index of each chunk's first URL (its task id names it)."""
        return range(0, self.count, self.size)

    @property
    def chunks(self) -> int:
        return len(self.starts)

    def worst_case_seconds(self) -> float:
        """How long the batch may take at worst: as if one io slot ran the chunks one after
        another, every URL using its whole budget."""
        waves = -(-min(self.size, self.count) // self.max_connections)
        per_chunk = min(self.chunk_seconds, waves * (self.budget + FLUSH_TICK)) + SLACK
        return self.chunks * per_chunk


def plan_http_batch(count: int, timeout: float | None, limits: HttpLimits) -> HttpBatchPlan:
    """The plan of a batch of ``count`` URLs of ``timeout`` seconds each (None: http.timeout)."""
    budget = limits.url_budget(timeout)
    return HttpBatchPlan(
        count, budget, limits.chunk_size(budget), limits.chunk_seconds, limits.max_connections
    )


__all__ = ["SLACK", "FLUSH_TICK", "HttpLimits", "HttpBatchPlan", "plan_http_batch"]
