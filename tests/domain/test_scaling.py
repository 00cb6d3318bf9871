"""The scaling policy, table-tested: bounds, tolerance, rate limit, window, zero, staleness."""

from __future__ import annotations

import pytest

from lewis_tasks.domain.scaling import (
    DOWN,
    GROW,
    HOLD,
    KEEP,
    NONE,
    SHRINK,
    UP,
    QueueLoad,
    QueuePolicy,
    Recommendation,
    ScalingDecision,
    advise_pool,
    decide_scale,
)

NOW = 10_000.0
POLICY = QueuePolicy(
    "io", min_workers=1, max_workers=10, target_per_worker=10, stabilization_window=300
)


def load(total: int, workers: int, *, unacked: int = 0, age: float = 1.0) -> QueueLoad:
    return QueueLoad("io", total - unacked, unacked, workers, NOW - age)


def decide(
    total: int,
    workers: int,
    history: tuple[tuple[float, int], ...] = (),
    policy: QueuePolicy = POLICY,
    **kw: int,
) -> ScalingDecision:
    past = [Recommendation(NOW - ago, n) for ago, n in history]
    return decide_scale(policy, load(total, workers, **kw), past, NOW, max_age=20)


@pytest.mark.parametrize(
    ("total", "workers", "action", "desired"),
    [
        (0, 1, NONE, 1),  # idle, at the floor
        (10, 1, NONE, 1),  # exactly the target
        (11, 1, NONE, 1),  # 1.1: inside the 0.1 tolerance
        (12, 1, UP, 2),  # 1.2: outside it
        (30, 1, UP, 3),  # ceil(30/10)
        (25, 2, UP, 3),  # ceil(2.5)
        (21, 2, NONE, 2),  # 1.05 of target: tolerance
        (1000, 3, UP, 7),  # capped by +4 (3 -> 7), larger than +100 %
        (1000, 6, UP, 10),  # +100 % would be 12: max_workers 10 wins
        (1000, 10, NONE, 10),  # at the ceiling
        (50, 1, UP, 5),  # +4 from 1 is exactly 5
        (5, 3, DOWN, 1),  # no history: the window holds nothing higher
    ],
)
def test_horizontal_table(total: int, workers: int, action: str, desired: int) -> None:
    d = decide(total, workers)
    assert (d.action, d.desired) == (action, desired), d.reason


def test_unacked_counts_as_load() -> None:
    assert decide(30, 1, unacked=30).desired == 3  # all running or prefetched: still load


def test_scale_up_rate_limit_says_so() -> None:
    d = decide(1000, 3)
    assert d.recommended == 10 and d.desired == 7 and "limited" in d.reason


def test_scale_down_waits_for_the_window_highest_wins() -> None:
    # Given recommendations of 4 and 2 within the window, load now asks for 1
    d = decide(5, 4, history=((200, 4), (100, 2)))
    assert (d.action, d.desired, d.recommended) == (HOLD, 4, 1)
    assert "held at 4" in d.reason
    # the 4 is older than the window: the 2 wins, a partial step down
    d = decide(5, 4, history=((301, 4), (100, 2)))
    assert (d.action, d.desired) == (DOWN, 2)
    # everything in the window agrees
    d = decide(5, 4, history=((400, 4), (100, 1)))
    assert (d.action, d.desired) == (DOWN, 1)


def test_scale_up_ignores_the_window() -> None:
    assert decide(40, 1, history=((10, 1), (5, 1))).desired == 4


@pytest.mark.parametrize(
    ("total", "workers", "activation", "desired"),
    [
        (0, 1, 0, 0),  # min 0, nothing queued: to zero (no history holds it)
        (3, 1, 5, 0),  # at or below the activation threshold: still zero
        (5, 0, 5, 0),  # a zero pool stays asleep at the threshold
        (6, 0, 5, 1),  # past it: wakes
        (35, 0, 5, 4),  # wakes straight to what the load needs (+4 from 0)
        (1, 0, 0, 1),  # threshold 0: one message wakes it
    ],
)
def test_scale_to_and_from_zero(total: int, workers: int, activation: int, desired: int) -> None:
    policy = QueuePolicy(
        "io", min_workers=0, max_workers=10, target_per_worker=10, activation=activation
    )
    assert decide(total, workers, policy=policy).desired == desired


def test_without_min_zero_the_floor_is_kept() -> None:
    assert decide(0, 3).desired == 1


def test_missing_and_stale_metrics_decide_nothing_and_say_why() -> None:
    d = decide_scale(POLICY, QueueLoad("io", None, None, None, None), [], NOW, max_age=20)
    assert (d.action, d.desired) == (NONE, None) and "no ready, unacked, workers" in d.reason
    assert not d.changes
    d = decide_scale(POLICY, load(100, 1, age=45), [], NOW, max_age=20)
    assert (d.action, d.desired) == (NONE, None) and "stale (45s old" in d.reason


def test_override_replaces_the_policy() -> None:
    d = decide_scale(POLICY, load(0, 1), [], NOW, max_age=20, override=3)
    assert (d.action, d.desired) == (UP, 3) and "override" in d.reason


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="min_workers"):
        QueuePolicy("io", min_workers=5, max_workers=2)
    with pytest.raises(ValueError, match="target_per_worker"):
        QueuePolicy("io", target_per_worker=0)


def test_oscillating_load_does_not_flap_the_pool() -> None:
    """Load swings 0 <-> 40 every period for ten minutes: one step up, no step down, then
    down once the load stays low for a whole window."""
    period, window = 15.0, 300.0
    policy = QueuePolicy(
        "io", min_workers=1, max_workers=10, target_per_worker=10, stabilization_window=window
    )
    workers, history, changes = 1, [], []
    t = 0.0
    series = [40 if i % 2 else 0 for i in range(40)] + [0] * 25
    for i, total in enumerate(series):
        t = i * period
        d = decide_scale(policy, QueueLoad("io", total, 0, workers, t), history, t, 20)
        history.append(Recommendation(t, d.recommended))  # type: ignore[arg-type]
        if d.desired != workers:
            changes.append((t, workers, d.desired))
            workers = d.desired  # type: ignore[assignment]
    last_high = (len([x for x in series if x]) * 2 - 1) * period
    assert changes[0] == (period, 1, 4)
    assert len(changes) == 2, changes  # up once; down once, after the window
    down_at, _, to = changes[1]
    assert to == 1 and down_at >= last_high + window


@pytest.mark.parametrize(
    ("cpu", "mem", "advice"),
    [
        (95, 50, GROW),
        (50, 50, KEEP),
        (10, 20, SHRINK),
        (10, 60, KEEP),
        (95, 90, SHRINK),
        (81, 39, GROW),
        (29, 39, SHRINK),
        (30, 39, KEEP),
    ],
)
def test_vertical_advice(cpu: float, mem: float, advice: str) -> None:
    a = advise_pool("io-1@h", cpu, mem)
    assert a.advice == advice and a.reason
