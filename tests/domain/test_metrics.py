"""Metric math: series keys, windows, exact stats, histogram fields round trip, batches."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lewis_tasks.domain.histogram import LatencyHistogram
from lewis_tasks.domain.metrics import (
    MetricBatch,
    cumulative_buckets,
    histogram_fields,
    histogram_from_fields,
    overflow_key,
    parse_series,
    parse_window,
    series_key,
    stats_of_samples,
    window_slots,
)
from lewis_tasks.errors import InvalidInput


def test_series_key_is_order_independent_and_round_trips() -> None:
    a = series_key("celery_task_runtime", {"name": "x", "hostname": "w@h"})
    b = series_key("celery_task_runtime", {"hostname": "w@h", "name": "x"})
    assert a == b
    assert parse_series(a) == ("celery_task_runtime", {"hostname": "w@h", "name": "x"})
    assert parse_series(overflow_key(a)) == ("celery_task_runtime", {"overflow": "true"})


def test_bad_names_and_windows_are_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        series_key("bad name", {})
    for text in ("", "5 minutes", "-1s", "0"):
        with pytest.raises(InvalidInput):
            parse_window(text)
    assert parse_window("5m") == 300 and parse_window("90s") == 90 and parse_window("1h") == 3600


def test_window_slots_cover_the_window_and_end_at_now() -> None:
    slots = window_slots(now=1000.5, window=30, interval=10)
    assert list(slots) == [98, 99, 100]


def test_sample_stats_are_exact_nearest_rank() -> None:
    s = stats_of_samples("m", "gauge", 60, [5, 1, 3, 2, 4])
    assert (s.count, s.sum, s.min, s.max, s.avg, s.p50, s.p95) == (5, 15, 1, 5, 3, 3, 5)
    assert stats_of_samples("m", "gauge", 60, []).count == 0


@given(st.lists(st.integers(min_value=0, max_value=10**9), max_size=200))
def test_histogram_fields_round_trip_exactly(values: list[int]) -> None:
    hist = LatencyHistogram()
    for v in values:
        hist.record(v)
    fields: dict[str, int] = {}
    for op, suffix, value in histogram_fields(hist):
        if op == "+":
            fields[suffix] = fields.get(suffix, 0) + value
        else:
            fields[suffix] = value
    assert (
        histogram_from_fields(fields) == hist
        if values
        else histogram_from_fields(fields).count == 0
    )


def test_cumulative_buckets_end_with_count_and_never_count_early() -> None:
    hist = LatencyHistogram()
    for seconds in (0.002, 0.02, 0.2, 2.0):
        hist.record_seconds(seconds)
    buckets = dict(cumulative_buckets(hist))
    assert buckets[math.inf] == 4
    assert buckets[0.001] == 0 and buckets[0.0025] == 1 and buckets[0.025] == 2
    assert buckets[2.5] == 4


def test_batch_merge_and_rename_keep_every_count() -> None:
    a, b = MetricBatch(), MetricBatch()
    s1, s2 = series_key("c", {"k": "1"}), series_key("c", {"k": "2"})
    a.inc(1, s1, "c", 2)
    b.inc(1, s1, "c", 3)
    b.inc(1, s2, "c", 4)
    b.observe(1, series_key("h", {}), "h", 0.5)
    a.merge(b)
    assert a.counters[(1, s1)] == 5
    a.rename({s1: overflow_key(s1), s2: overflow_key(s2)})
    assert a.counters == {(1, overflow_key(s1)): 9}
    assert a.drop_before(2) == 2 and not a.counters and not a.histograms
