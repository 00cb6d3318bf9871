"""The latency histogram at its edges: one value, zero, negatives, bucket growth, exact dicts.

Written against the survivors of a mutation run (``scripts/mutation histogram``): each test
pins a boundary, a size or a whole output that a one-token change of the code would move.
"""

from __future__ import annotations

import pytest

from lewis_tasks.domain.histogram import LatencyHistogram, bucket_of
from lewis_tasks.errors import InvalidInput

PREALLOCATED = bucket_of(2**27 - 1) + 1  # buckets for every value up to ~134 s, made up front


def histogram_of(*values: int) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    return histogram


def test_an_empty_histogram_is_all_zeros_in_every_form() -> None:
    empty = LatencyHistogram()
    assert empty.to_dict() == {
        "format": 1,
        "unit": "us",
        "sub_bits": 7,
        "count": 0,
        "total": 0,
        "min": 0,
        "max": 0,
        "buckets": [],
    }
    assert empty.summary() == {
        "count": 0,
        "min_ms": 0.0,
        "mean_ms": 0.0,
        "p50_ms": 0.0,
        "p90_ms": 0.0,
        "p95_ms": 0.0,
        "p99_ms": 0.0,
        "p99.9_ms": 0.0,
        "max_ms": 0.0,
    }
    assert repr(empty) == "LatencyHistogram(count=0, p50=0us, p99=0us, max=0us)"


def test_one_value_is_every_percentile() -> None:
    one = histogram_of(7_000)
    assert [one.percentile(p) for p in (0, 1, 50, 99, 100)] == [7_000] * 5
    assert repr(one) == "LatencyHistogram(count=1, p50=7000us, p99=7000us, max=7000us)"


def test_zero_and_negative_values_count_as_zero() -> None:
    histogram = histogram_of(0, -250, 0)
    assert (histogram.count, histogram.min, histogram.max, histogram.total) == (3, 0, 0, 0)
    assert histogram.to_dict()["buckets"] == [[0, 3]]
    assert histogram_of(-1, 40).to_dict()["buckets"] == [[0, 1], [40, 1]]


def test_seconds_are_recorded_as_microseconds() -> None:
    histogram = LatencyHistogram()
    histogram.record_seconds(0.0015)
    histogram.record_seconds(2.0)
    assert (histogram.min, histogram.max, histogram.total) == (1_500, 2_000_000, 2_001_500)


def test_a_percentile_is_a_whole_bucket_midpoint() -> None:
    # 128 and 129 share one bucket; its midpoint is 128.5, reported as the whole 128.
    histogram = histogram_of(100, 129, 129, 300)
    assert histogram.percentile(50) == 128 and isinstance(histogram.percentile(50), int)


def test_summary_is_exact_to_the_microsecond_and_rounds_the_mean_to_it() -> None:
    summary = histogram_of(1, 2, 5_000).summary()  # mean 1667.67 µs
    assert summary == {
        "count": 3,
        "min_ms": 0.001,
        "mean_ms": 1.668,
        "p50_ms": 0.002,
        "p90_ms": 5.0,
        "p95_ms": 5.0,
        "p99_ms": 5.0,
        "p99.9_ms": 5.0,
        "max_ms": 5.0,
    }


def test_buckets_are_made_up_front_and_grow_exactly_to_a_larger_value() -> None:
    histogram = LatencyHistogram()
    assert len(histogram.counts) == PREALLOCATED == 1408
    histogram.record(2**27 - 1)
    assert len(histogram.counts) == PREALLOCATED
    histogram.record(2**30)
    assert len(histogram.counts) == bucket_of(2**30) + 1


def test_merge_grows_exactly_to_the_larger_side() -> None:
    big = histogram_of(2**31)
    small = histogram_of(3)
    small.merge(big)
    assert len(small.counts) == bucket_of(2**31) + 1
    assert small.to_dict()["buckets"] == [[3, 1], [bucket_of(2**31), 1]]


def test_from_dict_grows_exactly_and_adds_repeated_buckets() -> None:
    far = bucket_of(2**29)
    data = {
        "format": 1,
        "sub_bits": 7,
        "count": 6,
        "total": 2**29 + 5,
        "min": 0,
        "max": 2**29,
        "buckets": [[0, 2], [PREALLOCATED, 0], [far, 1], [0, 3], [7, 0]],
    }
    histogram = LatencyHistogram.from_dict(data)
    assert len(histogram.counts) == far + 1
    assert histogram.to_dict()["buckets"] == [[0, 5], [far, 1]]
    edge = LatencyHistogram.from_dict({**data, "count": 1, "buckets": [[PREALLOCATED, 1]]})
    assert len(edge.counts) == PREALLOCATED + 1 and edge.counts[PREALLOCATED] == 1


@pytest.mark.parametrize("buckets", [[[-1, 1]], [[3, -1], [4, 2]]])
def test_negative_buckets_are_refused_with_their_message(buckets: list[list[int]]) -> None:
    data = {
        "format": 1,
        "sub_bits": 7,
        "count": 1,
        "total": 3,
        "min": 3,
        "max": 3,
        "buckets": buckets,
    }
    with pytest.raises(InvalidInput) as err:
        LatencyHistogram.from_dict(data)
    assert str(err.value) == "malformed histogram: negative bucket"


def test_counts_that_do_not_add_up_are_refused_with_their_message() -> None:
    data = histogram_of(5, 6).to_dict()
    with pytest.raises(InvalidInput) as err:
        LatencyHistogram.from_dict({**data, "count": 3})
    assert str(err.value) == "malformed histogram: bucket counts do not add up to count"


def test_merging_keeps_the_smallest_minimum_from_either_side() -> None:
    first = histogram_of(10)
    first.merge(histogram_of(20))
    assert (first.min, first.max) == (10, 20)
    empty = LatencyHistogram()
    empty.merge(histogram_of(20, 30))
    assert (empty.min, empty.max, empty.count) == (20, 30, 2)


def test_a_histogram_equals_only_a_histogram() -> None:
    assert histogram_of(5) != "histogram"
    assert histogram_of(5) != histogram_of(6)
    assert histogram_of(5, 6) == histogram_of(6, 5)


def test_repr_shows_the_median_the_99th_and_the_maximum() -> None:
    histogram = histogram_of(*range(1, 101))  # small values are exact: p50 = 50, p99 = 99
    assert repr(histogram) == "LatencyHistogram(count=100, p50=50us, p99=99us, max=100us)"
