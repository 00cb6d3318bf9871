"""An HDR-style latency histogram: bounded relative error, exact merges, compact JSON.

Values are whole microseconds. Below ``2**SUB_BITS`` every value has its own bucket; above,
each power-of-two range is cut into ``2**(SUB_BITS-1)`` equal buckets, so a bucket is at
most 1/64 of its lower bound wide and a reported percentile (the bucket's midpoint, kept
inside the observed min..max) is within ``MAX_RELATIVE_ERROR`` (≈0.78 %) of the exact
nearest-rank value. Merging adds bucket counts, so a merge of parts is bit-for-bit the
histogram of all their values — percentiles of a distributed load test are never averaged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..errors import InvalidInput

SUB_BITS = 7
_SUB = 1 << SUB_BITS  # values below this are exact
_HALF = _SUB >> 1
MAX_RELATIVE_ERROR = 1 / _SUB  # half a bucket of width ≤ lower bound / 64
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
_FORMAT = 1


def bucket_of(value: int) -> int:
    """The bucket index holding ``value`` (µs, ≥ 0)."""
    if value < _SUB:
        return value
    shift = value.bit_length() - SUB_BITS
    return shift * _HALF + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The values ``[low, high]`` (inclusive) that share bucket ``index``."""
    if index < _SUB:
        return index, index
    shift, sub = divmod(index - _SUB, _HALF)
    shift += 1
    low = (sub + _HALF) << shift
    return low, low + (1 << shift) - 1


class LatencyHistogram:
    """Counts of latencies (µs) in log-linear buckets; mutable while recording."""

    __slots__ = ("counts", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * (_SUB + 20 * _HALF)  # up to ~2**27 µs without growing
        self.count = 0
        self.total = 0  # sum of values, exact, for the mean
        self.min = 0
        self.max = 0

    def record(self, value_us: int) -> None:
        """Add one latency in microseconds (negative values count as 0)."""
        value = value_us if value_us > 0 else 0
        index = (
            value
            if value < _SUB
            else (value.bit_length() - SUB_BITS) * _HALF
            + (value >> (value.bit_length() - SUB_BITS))
        )
        counts = self.counts
        if index >= len(counts):
            counts.extend([0] * (index + 1 - len(counts)))
        counts[index] += 1
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += 1
        self.total += value

    def record_seconds(self, seconds: float) -> None:
        self.record(int(seconds * 1_000_000))

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s values to this histogram (exactly)."""
        if other.count == 0:
            return
        if len(other.counts) > len(self.counts):
            self.counts.extend([0] * (len(other.counts) - len(self.counts)))
        for index, n in enumerate(other.counts):
            if n:
                self.counts[index] += n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    @classmethod
    def merged(cls, parts: Iterable[LatencyHistogram]) -> LatencyHistogram:
        result = cls()
        for part in parts:
            result.merge(part)
        return result

    def percentile(self, p: float) -> int:
        """The nearest-rank ``p``-th percentile (µs), within MAX_RELATIVE_ERROR; 0 if empty."""
        if not 0 <= p <= 100:
            raise InvalidInput(f"percentile {p} is not between 0 and 100")
        if self.count == 0:
            return 0
        rank = max(1, math.ceil(p / 100 * self.count))
        if rank == 1 or rank == self.count:  # the extremes are known exactly
            return self.min if rank == 1 else self.max
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                low, high = bucket_bounds(index)
                return min(max((low + high) // 2, self.min), self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def summary(self) -> dict[str, Any]:
        """count, min, mean, p50…p99.9 and max in milliseconds, for tables and results."""
        result: dict[str, Any] = {
            "count": self.count,
            "min_ms": self.min / 1000,
            "mean_ms": round(self.mean / 1000, 3),
        }
        for p in PERCENTILES:
            result[f"p{p:g}_ms"] = self.percentile(p) / 1000
        result["max_ms"] = self.max / 1000
        return result

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON: the non-empty buckets as ``[[index, count], …]`` plus exact stats."""
        return {
            "format": _FORMAT,
            "unit": "us",
            "sub_bits": SUB_BITS,
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
            "buckets": [[i, n] for i, n in enumerate(self.counts) if n],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        """The histogram :meth:`to_dict` described; InvalidInput if it is not one of ours."""
        if data.get("format") != _FORMAT or data.get("sub_bits") != SUB_BITS:
            raise InvalidInput(f"not a format-{_FORMAT} histogram with sub_bits={SUB_BITS}")
        result = cls()
        try:
            for index, n in data["buckets"]:
                index, n = int(index), int(n)
                if index < 0 or n < 0:
                    raise ValueError("negative bucket")
                if index >= len(result.counts):
                    result.counts.extend([0] * (index + 1 - len(result.counts)))
                result.counts[index] += n
            result.count, result.total = int(data["count"]), int(data["total"])
            result.min, result.max = int(data["min"]), int(data["max"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed histogram: {exc}") from None
        if sum(result.counts) != result.count:
            raise InvalidInput("malformed histogram: bucket counts do not add up to count")
        return result

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatencyHistogram) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"LatencyHistogram(count={self.count}, p50={self.percentile(50)}us, "
            f"p99={self.percentile(99)}us, max={self.max}us)"
        )


__all__ = [
    "LatencyHistogram",
    "bucket_of",
    "bucket_bounds",
    "MAX_RELATIVE_ERROR",
    "PERCENTILES",
    "SUB_BITS",
]
