"""The scaling policy's edges and its exact output: every field of a decision, the reason
text, the boundaries of tolerance, staleness, window and the vertical thresholds."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from lewis_tasks.domain.scaling import (
    QueueLoad,
    QueuePolicy,
    Recommendation,
    ScalingDecision,
    advise_pool,
    decide_scale,
)

NOW = 5_000.0
POLICY = QueuePolicy(
    "cpu", min_workers=1, max_workers=10, target_per_worker=10, stabilization_window=300
)


def run(
    ready: int,
    unacked: int,
    workers: int | None,
    *,
    age: float = 2.0,
    history: tuple[tuple[float, int], ...] = (),
    policy: QueuePolicy = POLICY,
    override: int | None = None,
) -> ScalingDecision:
    load = QueueLoad("cpu", ready, unacked, workers, NOW - age)
    return decide_scale(
        policy,
        load,
        [Recommendation(NOW - a, n) for a, n in history],
        NOW,
        max_age=20,
        override=override,
    )


def inputs(
    ready: int | None,
    unacked: int | None,
    workers: int | None,
    age: float = 2.0,
    policy: QueuePolicy = POLICY,
) -> dict[str, object]:
    return {
        "ready": ready,
        "unacked": unacked,
        "workers": workers,
        "measured_at": NOW - age,
        "now": NOW,
        "policy": asdict(policy),
    }


def test_a_scale_up_in_full() -> None:
    d = run(25, 5, 1)
    assert d == ScalingDecision(
        "cpu", "up", 1, 3, 3, "load 30 / target 10 per worker -> 3", inputs(25, 5, 1)
    )
    assert d.to_dict()["inputs"]["policy"]["queue"] == "cpu"


def test_a_limited_scale_up_and_a_clamp_say_both() -> None:
    d = run(2000, 0, 2)
    assert (d.queue, d.current, d.desired, d.recommended) == ("cpu", 2, 6, 10)
    assert d.reason == (
        "load 2000 / target 10 per worker -> 200, clamped to [1, 10] -> 10; "
        "scale-up limited to 6 (+100 % or +4 per period)"
    )
    assert d.inputs == inputs(2000, 0, 2)
    # exactly the limit: not "limited"
    assert run(60, 0, 2).reason == "load 60 / target 10 per worker -> 6"


def test_a_plain_scale_down_and_a_hold_in_full() -> None:
    d = run(10, 0, 3)
    assert d == ScalingDecision(
        "cpu", "down", 3, 1, 1, "load 10 / target 10 per worker -> 1", inputs(10, 0, 3)
    )
    held = run(10, 0, 3, history=((100, 3),))
    assert held == ScalingDecision(
        "cpu",
        "hold",
        3,
        3,
        1,
        "load 10 / target 10 per worker -> 1; scale-down held at 3: "
        "the highest recommendation of the last 300s",
        inputs(10, 0, 3),
    )
    partial = run(10, 0, 3, history=((100, 2),))
    assert (partial.action, partial.desired, partial.current) == ("down", 2, 3)
    assert partial.queue == "cpu" and partial.inputs == inputs(10, 0, 3)


def test_a_steady_pool_in_full() -> None:
    d = run(11, 0, 1)  # 1.1 of the target: inside the tolerance, exactly at its edge
    assert d == ScalingDecision(
        "cpu",
        "none",
        1,
        1,
        1,
        "load 11 within 0.1 of the target for 1 worker(s) (10 each)",
        inputs(11, 0, 1),
    )
    assert run(12, 0, 1).desired == 2  # 1.2: outside


def test_the_window_edge_is_exclusive() -> None:
    assert run(0, 0, 3, history=((300, 3),)).desired == 1  # exactly window old: gone
    assert run(0, 0, 3, history=((299.9, 3),)).desired == 3


def test_stale_and_missing_in_full() -> None:
    assert run(5, 0, 1, age=20).desired == 1  # exactly max_age old: still usable
    stale = run(5, 0, 2, age=20.5)
    assert stale == ScalingDecision(
        "cpu",
        "none",
        2,
        None,
        None,
        "no action: metrics are stale (20s old, limit 20s; is the collector running?)",
        inputs(5, 0, 2, age=20.5),
    )
    no_time = decide_scale(POLICY, QueueLoad("cpu", 1, 0, 2, None), [], NOW, 20)
    assert no_time == ScalingDecision(
        "cpu",
        "none",
        2,
        None,
        None,
        "no action: no timestamp measured for queue cpu yet (the collector writes them)",
        {
            "ready": 1,
            "unacked": 0,
            "workers": 2,
            "measured_at": None,
            "now": NOW,
            "policy": asdict(POLICY),
        },
    )
    no_workers = decide_scale(POLICY, QueueLoad("cpu", 1, 0, None, NOW), [], NOW, 20)
    assert (no_workers.current, no_workers.reason) == (
        None,
        "no action: no workers measured for queue cpu yet (the collector writes them)",
    )


def test_override_in_full() -> None:
    d = run(0, 0, 1, override=4)
    want = inputs(0, 0, 1)
    want["override"] = 4
    assert d == ScalingDecision(
        "cpu", "up", 1, 4, 4, "manual override: 4 worker(s) (`lewis scale set`)", want
    )


def test_zero_workers_is_zero_current() -> None:
    zero = QueuePolicy("cpu", min_workers=0, max_workers=4, target_per_worker=10, activation=2)
    d = run(2, 0, 0, policy=zero)
    assert (d.action, d.current, d.desired) == ("none", 0, 0)
    assert d.reason == "load 2 at or below the activation threshold 2: scale to zero"


@pytest.mark.parametrize(("lo", "hi", "target"), [(0, 1, 0.5), (2, 2, 1.0), (1, 1, 0.01)])
def test_edge_policies_are_accepted(lo: int, hi: int, target: float) -> None:
    assert QueuePolicy("io", lo, hi, target).max_workers == hi


@pytest.mark.parametrize(
    ("cpu", "mem", "advice", "reason"),
    [
        (95, 85, "grow", "cpu 95% > 80%: saturated, more pool processes (or cores)"),
        (80, 50, "keep", "cpu 80%, memory 50%: within bounds"),
        (50, 86, "shrink", "memory 86% > 85%: fewer pool processes"),
        (10, 40, "keep", "cpu 10%, memory 40%: within bounds"),
        (10, 39, "shrink", "cpu 10% < 30% and memory 39% < 40%: mostly idle"),
    ],
)
def test_vertical_edges_in_full(cpu: float, mem: float, advice: str, reason: str) -> None:
    a = advise_pool("w@h", cpu, mem)
    assert a.to_dict() == {
        "worker": "w@h",
        "advice": advice,
        "reason": reason,
        "cpu_percent": cpu,
        "memory_percent": mem,
    }
