"""The latency histogram: percentiles within the stated error, exact merges, JSON round trip."""

from __future__ import annotations

import json
import math
import random

import pytest

from lewis_tasks.domain.histogram import (
    MAX_RELATIVE_ERROR,
    PERCENTILES,
    LatencyHistogram,
    bucket_bounds,
    bucket_of,
)
from lewis_tasks.errors import InvalidInput


def exact_percentile(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def histogram_of(values: list[int]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    return histogram


def samples(seed: int, n: int = 20_000) -> list[int]:
    rng = random.Random(seed)
    # lognormal around ~2 ms with a long tail, plus a few huge outliers and tiny values
    values = [int(rng.lognormvariate(7.5, 1.2)) for _ in range(n)]
    values += [rng.randrange(0, 200) for _ in range(200)] + [
        rng.randrange(10**8, 10**10) for _ in range(5)
    ]
    return values


def test_buckets_tile_the_value_range() -> None:
    previous_high = -1
    for index in range(bucket_of(10**9) + 1):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1  # contiguous, no gaps or overlaps
        assert bucket_of(low) == index and bucket_of(high) == index
        assert (high - low + 1) / 2 <= max(1, low) * MAX_RELATIVE_ERROR or high == low
        previous_high = high


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_within_stated_relative_error(seed: int) -> None:
    values = samples(seed)
    histogram = histogram_of(values)
    for p in (*PERCENTILES, 0.0, 1.0, 25.0, 75.0, 99.99, 100.0):
        exact = exact_percentile(values, p)
        got = histogram.percentile(p)
        assert abs(got - exact) <= exact * MAX_RELATIVE_ERROR, (p, got, exact)
    assert (histogram.min, histogram.max, histogram.count) == (
        min(values),
        max(values),
        len(values),
    )
    assert histogram.mean == sum(values) / len(values)


def test_small_values_are_exact() -> None:
    values = list(range(128)) * 3
    histogram = histogram_of(values)
    for p in (1, 33, 50, 90, 99, 100):
        assert histogram.percentile(p) == exact_percentile(values, p)


def test_merge_of_parts_equals_histogram_of_all_values() -> None:
    values = samples(7)
    rng = random.Random(7)
    parts: list[list[int]] = [[] for _ in range(5)]
    for value in values:
        parts[rng.randrange(5)].append(value)
    parts.append([])  # an idle worker's empty part
    merged = LatencyHistogram.merged(histogram_of(part) for part in parts)
    whole = histogram_of(values)
    assert merged == whole
    assert merged.to_dict() == whole.to_dict()
    for p in PERCENTILES:
        assert merged.percentile(p) == whole.percentile(p)


def test_merge_differs_from_averaging_percentiles() -> None:
    fast, slow = histogram_of([1000] * 99), histogram_of([100_000] * 1)
    merged = LatencyHistogram.merged([fast, slow])
    averaged = (fast.percentile(99) + slow.percentile(99)) / 2  # the wrong way: ~50 ms
    assert abs(merged.percentile(99) - 1000) <= 1000 * MAX_RELATIVE_ERROR < averaged
    assert merged.percentile(100) == 100_000


def test_json_round_trip_is_compact_and_exact() -> None:
    histogram = histogram_of(samples(11))
    text = json.dumps(histogram.to_dict())
    back = LatencyHistogram.from_dict(json.loads(text))
    assert back == histogram
    assert back.summary() == histogram.summary()
    assert len(text) < 20_000  # sparse: only non-empty buckets, not one entry per sample
    assert LatencyHistogram.from_dict(LatencyHistogram().to_dict()) == LatencyHistogram()


def test_malformed_dicts_are_invalid_input() -> None:
    good = histogram_of([5, 500, 50_000]).to_dict()
    with pytest.raises(InvalidInput, match="add up"):
        LatencyHistogram.from_dict({**good, "count": 4})
    with pytest.raises(InvalidInput, match="format"):
        LatencyHistogram.from_dict({**good, "sub_bits": 3})
    with pytest.raises(InvalidInput, match="malformed"):
        LatencyHistogram.from_dict({**good, "buckets": [[1, -1]]})


def test_empty_histogram_and_bad_percentile() -> None:
    empty = LatencyHistogram()
    assert empty.percentile(99) == 0 and empty.mean == 0.0
    assert empty.summary()["count"] == 0
    with pytest.raises(InvalidInput, match="101"):
        empty.percentile(101)


def test_summary_in_milliseconds() -> None:
    summary = histogram_of([1000, 2000, 3000, 4000]).summary()
    assert summary["min_ms"] == 1.0 and summary["max_ms"] == 4.0 and summary["count"] == 4
    assert summary["mean_ms"] == 2.5
    assert abs(summary["p50_ms"] - 2.0) <= 2.0 * MAX_RELATIVE_ERROR
