"""Alert rules and the state machine: value series in, state series out.

The scenarios are the ones `promtool test rules` checks for the equivalent Prometheus rule
(`ALERTS{alertstate=...}` at each evaluation): `for` counted from the first evaluation the
condition holds, a pending alert dropped when it stops holding, `keep_firing_for` counted from
the first evaluation without it, a label set that vanishes while others report treated as
Prometheus treats an absent series. Where LEWIS differs on purpose: no data at all (a stalled
collector) raises the rule's own "nodata" alert and holds its alerts as they were.
"""

from __future__ import annotations

import pytest

from lewis_tasks.domain.alerts import (
    DEFAULT_RULES,
    default_rules,
    merge_rules,
    parse_rule,
    parse_rules,
    severity_band,
)
from lewis_tasks.domain.alertstate import (
    FIRING,
    NODATA,
    Evaluation,
    advance,
    dump_states,
    fingerprint,
    load_states,
)
from lewis_tasks.domain.alertvalues import Frame
from lewis_tasks.domain.histogram import LatencyHistogram
from lewis_tasks.domain.metrics import series_key
from lewis_tasks.errors import InvalidInput

STEP = 15.0


def rule(**over: object):  # noqa: ANN201
    raw = {
        "name": "Backlog",
        "metric": "celery_queue_length",
        "aggregation": "last",
        "threshold": 100,
        "by": ["queue_name"],
        **over,
    }
    return parse_rule(raw)


OTHER = (("queue_name", "cpu"),)


def evaluation(r, value: float | str | None) -> Evaluation:  # noqa: ANN001
    """None: no data at all; "gone": this label set absent while another reports."""
    if value is None:
        return Evaluation({}, frozenset(), nodata=True)
    if value == "gone":
        return Evaluation({OTHER: 1.0}, frozenset())
    group = (("queue_name", "io"),)
    return Evaluation({group: value}, frozenset({group} if r.condition.holds(value) else ()))


def run(r, values: list, alerts=None, start: float = 0.0):  # noqa: ANN001, ANN201
    """The alert's state after each evaluation ("inactive" when it has none)."""
    fp = fingerprint(r.name, {"queue_name": "io"})
    alerts = alerts or {}
    out = []
    for i, v in enumerate(values):
        alerts, _ = advance(r, alerts, evaluation(r, v), start + i * STEP)
        out.append(alerts[fp].state if fp in alerts else "inactive")
    return out, alerts


H, L = 200.0, 50.0  # above and below the threshold of 100

SCENARIOS = [
    # name, for, keep_firing_for, values, states
    (
        "for counted from the first hold",
        "1m",
        0,
        [H, H, H, H, H, H],
        ["pending", "pending", "pending", "pending", "firing", "firing"],
    ),
    ("for 0 fires at once", 0, 0, [L, H, L], ["inactive", "firing", "resolved"]),
    (
        "for interrupted starts again",
        "45s",
        0,
        [H, H, L, H, H, H, H],
        ["pending", "pending", "inactive", "pending", "pending", "pending", "firing"],
    ),
    (
        "flapping never fires with for",
        "30s",
        0,
        [H, L, H, L, H, L],
        ["pending", "inactive", "pending", "inactive", "pending", "inactive"],
    ),
    (
        "flapping held up by keep_firing_for",
        0,
        "30s",
        [H, L, H, L, L, L, H],
        ["firing", "firing", "firing", "firing", "firing", "resolved", "firing"],
    ),
    (
        "keep_firing_for ends exactly at its length",
        0,
        "45s",
        [H, L, L, L, L],
        ["firing", "firing", "firing", "firing", "resolved"],
    ),
    # a label set gone while others still report: Prometheus' absent series
    (
        "a vanished series drops a pending alert",
        "30s",
        0,
        [H, "gone", H, H, H],
        ["pending", "inactive", "pending", "pending", "firing"],
    ),
    (
        "a vanished series resolves a firing alert",
        0,
        0,
        [H, "gone", "gone"],
        ["firing", "resolved", "resolved"],
    ),
    (
        "a vanished series inside keep_firing_for keeps firing",
        0,
        "30s",
        [H, "gone", H, "gone", "gone", "gone"],
        ["firing", "firing", "firing", "firing", "firing", "resolved"],
    ),
    # no data at all (a stalled collector): nothing is known, nothing moves
    (
        "no data holds a pending alert, for counts on",
        "30s",
        0,
        [H, None, H, H],
        ["pending", "pending", "firing", "firing"],
    ),
    (
        "no data holds a firing alert until data says otherwise",
        0,
        0,
        [H, None, None, L],
        ["firing", "firing", "firing", "resolved"],
    ),
]


@pytest.mark.parametrize("name,for_,keep,values,states", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_state_series(
    name: str, for_: object, keep: object, values: list, states: list[str]
) -> None:
    r = rule(**{"for": for_, "keep_firing_for": keep})
    assert run(r, values)[0] == states


def test_a_restart_in_the_middle_of_for_carries_on() -> None:
    # Given an alert two evaluations into a 1m `for`, its state serialised as the engine does
    r = rule(**{"for": "1m"})
    first, alerts = run(r, [H, H])
    restored = load_states(dump_states(alerts).encode())
    # When a new process restores it and evaluates on
    rest, _ = run(r, [H, H, H], alerts=restored, start=2 * STEP)
    # Then it fires at the same evaluation as an uninterrupted run
    whole, _ = run(r, [H] * 5)
    assert first + rest == whole == ["pending"] * 4 + ["firing"]
    assert restored == alerts


def test_transitions_are_reported_once_each() -> None:
    r = rule(**{"for": "15s"})
    alerts: dict = {}
    seen = []
    for i, v in enumerate([H, H, H, L, L]):
        alerts, moves = advance(r, alerts, evaluation(r, v), i * STEP)
        seen += [(m.from_state, m.to_state, m.at) for m in moves]
    assert seen == [
        ("inactive", "pending", 0.0),
        ("pending", "firing", 15.0),
        ("firing", "resolved", 45.0),
    ]


def test_nodata_is_its_own_state_and_leaves_when_data_returns() -> None:
    r = rule()
    alerts, moves = advance(r, {}, evaluation(r, None), 0.0)
    nodata = fingerprint(r.name, {}, nodata=True)
    assert alerts[nodata].state == NODATA and [m.to_state for m in moves] == [NODATA]
    alerts, moves = advance(r, alerts, evaluation(r, L), STEP)
    assert nodata not in alerts and [(m.from_state, m.to_state) for m in moves] == [
        (NODATA, "inactive")
    ]


def test_severity_bands_are_the_guides() -> None:
    assert [severity_band(v, 100) for v in (100.5, 110, 119, 120, 149, 150, 400)] == [
        "low",
        "medium",
        "medium",
        "high",
        "high",
        "critical",
        "critical",
    ]
    assert severity_band(0.5, 1, "<") == "critical"  # half of a floor: twice past it
    r = rule(**{"for": 0})
    alerts, _ = advance(r, {}, evaluation(r, 125.0), 0.0)
    assert next(iter(alerts.values())).severity == "high"


@pytest.mark.parametrize(
    "raw,words",
    [
        ({"name": "X", "metric": "m"}, "'X': threshold is required"),
        ({"name": "X", "metric": "m", "threshold": 1, "aggregation": "median"}, "'X': aggregation"),
        ({"name": "X", "metric": "m", "threshold": 1, "comparison": "=>"}, "'X': comparison"),
        ({"name": "X", "metric": "m", "threshold": "lots"}, "'X': threshold must be a number"),
        ({"name": "X", "metric": "m", "threshold": 1, "for": "soon"}, "'X': for"),
        ({"name": "X", "metric": "m", "threshold": 1, "severity": "urgent"}, "'X': severity"),
        (
            {"name": "X", "metric": "m", "threshold": 1, "thresold": 2},
            "'X': unknown key 'thresold'",
        ),
        ({"name": "X", "metric": "bad name", "threshold": 1}, "'X': metric name"),
        ({"name": "X", "metric": "m", "threshold": 1, "labels": {"severity": "x"}}, "'X': labels"),
        ({"metric": "m", "threshold": 1}, "alert rule None"),
    ],
)
def test_a_bad_rule_is_one_line_naming_it(raw: dict, words: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_rule(raw)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_defaults_parse_and_the_guide_names_override_them() -> None:
    rules = default_rules({"cpu_usage": 70, "error_rate": 5.0})
    by_name = {r.name: r for r in rules}
    assert len(rules) == len(DEFAULT_RULES) == 9
    assert by_name["HostCpuHigh"].condition.threshold == 70
    assert by_name["TaskErrorRateHigh"].condition.threshold == 0.05
    assert by_name["CeleryHighQueueLength"].for_ == 1200
    mine = parse_rules(
        [{"name": "HostCpuHigh", "metric": "lewis_host_cpu_percent", "threshold": 50}]
    )
    merged = merge_rules(rules, mine)
    assert [r.condition.threshold for r in merged if r.name == "HostCpuHigh"] == [50]
    with pytest.raises(InvalidInput, match="defined twice"):
        parse_rules([{"name": "A", "metric": "m", "threshold": 1}] * 2)


# --- values from the store's slots ------------------------------------------------------


def _rows(slots: dict[int, dict[str, object]]) -> list:
    rows = []
    for slot, fields in sorted(slots.items()):
        counters = {
            k: v
            for k, v in fields.items()
            if k.startswith('["celery_task_s') or k.startswith('["celery_task_f')
        }
        hists = {k: v for k, v in fields.items() if isinstance(v, LatencyHistogram)}
        gauges = {k: v for k, v in fields.items() if k not in counters and k not in hists}
        rows.append((slot, counters, hists, gauges))
    return rows


def test_frame_values_per_kind_and_label_set() -> None:
    ok = series_key("celery_task_succeeded_total", {"name": "t", "queue": "io"})
    bad = series_key("celery_task_failed_total", {"name": "t", "queue": "io"})
    q_io = series_key("celery_queue_length", {"queue_name": "io"})
    q_cpu = series_key("celery_queue_length", {"queue_name": "cpu"})
    w_io = series_key("celery_active_worker_count", {"queue_name": "io"})
    w_cpu = series_key("celery_active_worker_count", {"queue_name": "cpu"})
    hist = LatencyHistogram()
    for ms in (100, 200, 9000):
        hist.record(ms * 1000)
    run_s = series_key("celery_task_runtime", {"name": "t"})
    rows = _rows(
        {
            8: {ok: 10.0, bad: 0.0, q_io: 5.0},
            9: {ok: 8.0, bad: 2.0, run_s: hist, q_io: 7.0, q_cpu: 3.0, w_io: 0.0, w_cpu: 1.0},
        }
    )
    kinds = {
        "celery_task_succeeded_total": "counter",
        "celery_task_failed_total": "counter",
        "celery_queue_length": "gauge",
        "celery_active_worker_count": "gauge",
        "celery_task_runtime": "histogram",
    }
    frame = Frame.from_rows(rows, kinds, interval=10, now=99.0)
    fail = parse_rule(DEFAULT_RULES[4])  # TaskErrorRateHigh: failed / (succeeded + failed)
    assert frame.evaluate(fail).values == {(): 0.1}
    p95 = frame.evaluate(parse_rule(DEFAULT_RULES[3]))
    assert p95.active == {()} and 8.9 < p95.values[()] < 9.2
    lonely = frame.evaluate(parse_rule(DEFAULT_RULES[-1]))  # messages and no worker
    assert lonely.values == {(("queue_name", "io"),): 7.0, (("queue_name", "cpu"),): 3.0}
    assert lonely.active == {(("queue_name", "io"),)}
    # the store knows no cpu metric: its rule says so instead of "ok"
    assert frame.evaluate(parse_rule(DEFAULT_RULES[0])).nodata
    # a gauge not written for more than two slots is stale
    assert (
        Frame.from_rows(rows, kinds, interval=10, now=125.0)
        .evaluate(parse_rule(DEFAULT_RULES[-1]))
        .nodata
    )
    # a counter that did not move is 0, not "no data"
    quiet = Frame.from_rows(_rows({}), kinds, interval=10, now=99.0).evaluate(fail)
    assert quiet.values == {(): 0.0} and not quiet.nodata
    firing = [
        a
        for a in advance(parse_rule({**DEFAULT_RULES[-1], "for": 0}), {}, lonely, 99.0)[0].values()
        if a.state == FIRING
    ]
    assert [a.annotations["summary"] for a in firing] == ["queue io has 7 messages and no worker"]
