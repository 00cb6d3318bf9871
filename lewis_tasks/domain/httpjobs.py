"""What an HTTP batch and a load test report back: typed progress and results.

Each is a frozen dataclass with the fields its JSON has, read with attributes; it is also a
read-only mapping of that JSON (``summary["ok"]``, ``progress == {...}``), and ``to_dict()``
gives the JSON exactly as the task returned it (the CLI's ``--json`` prints it unchanged).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self

from ..errors import InvalidInput


class JsonView(Mapping[str, Any]):
    """A typed result that reads as its JSON too; subclasses are dataclasses with ``data``."""

    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON as the task returned it (a copy)."""
        return copy.deepcopy(self.data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The typed view of ``data``; InvalidInput if a field is missing."""
        names = [f.name for f in fields(cls) if f.name != "data"]  # type: ignore[arg-type]
        try:
            return cls(**{n: data[n] for n in names}, data=dict(data))  # type: ignore[call-arg]
        except KeyError as exc:
            raise InvalidInput(f"not a {cls.__name__}: {exc} missing") from None


@dataclass(frozen=True, eq=False)
class HttpBatchProgress(JsonView):
    """A batch as persisted so far (status ``pending`` before any chunk started)."""

    total: int
    done: int
    ok: int
    failed: int
    status: str
    data: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, eq=False)
class HttpBatchSummary(JsonView):
    """A finished batch: counts by status and error class, bytes, latency, chunks."""

    batch_id: str
    total: int
    done: int
    ok: int
    failed: int
    statuses: dict[str, int]
    errors: dict[str, int]
    bytes: int
    latency_ms: dict[str, Any]
    chunks: int
    processes: list[str]
    slowest_chunk_s: float
    data: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, eq=False)
class LoadtestProgress(JsonView):
    """Requests, errors and rate summed over the parts that reported."""

    parts: int
    reporting: int
    elapsed_s: float
    requests: int
    errors: int
    rps: float
    data: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, eq=False)
class LoadtestResult(JsonView):
    """A load test's parts merged: rate, latency percentiles, status codes, errors."""

    url: str
    method: str
    mode: str
    concurrency: int
    rate: float | None
    duration_s: float
    requests: int
    rps: float
    bytes: int
    status_counts: dict[str, int]
    errors: dict[str, int]
    parts: int
    latency_ms: dict[str, Any]
    data: dict[str, Any] = field(repr=False)

    @property
    def cancelled(self) -> bool:
        """Stopped early by a cancel (its figures cover the time it ran)."""
        return bool(self.data.get("cancelled", False))


@dataclass(frozen=True, eq=False)
class LoadtestRun(JsonView):
    """A load test as stored: status, parameters, the merged result once it ended."""

    id: str
    status: str
    request: dict[str, Any] | None
    result: dict[str, Any] | None
    finished_at: Any
    data: dict[str, Any] = field(repr=False)


__all__ = [
    "JsonView",
    "HttpBatchProgress",
    "HttpBatchSummary",
    "LoadtestProgress",
    "LoadtestResult",
    "LoadtestRun",
]
