"""The scaling policy: how many workers a queue needs, decided from measured load.

Per queue, as Kubernetes' HorizontalPodAutoscaler decides replicas and KEDA's Redis list
scaler feeds it:

* load = ready (every priority sub-list) + unacked (delivered, running or prefetched);
* recommendation = ceil(load / target_per_worker), kept at the current count while the
  load per worker is within ``tolerance`` (0.1) of the target, clamped to
  [min_workers, max_workers];
* a scale-up applies at once, by at most the larger of +100 % and +4 workers per period;
* a scale-down applies only when every recommendation of the last ``stabilization_window``
  seconds agrees: the highest one in the window wins, so flapping load does not flap the pool;
* with ``min_workers`` 0 the pool may go to zero while load is at or below ``activation``
  (KEDA's ``activationListLength``), and comes back from zero once load exceeds it.

Stale or missing metrics decide nothing, and the decision says why. Pure: the caller brings
the load, the past recommendations and the clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

UP, DOWN, NONE, HOLD = "up", "down", "none", "hold"
SCALE_UP_PODS = 4  # HPA's default scale-up policy: +100 % or +4 pods per period, the larger
TOLERANCE = 0.1  # HPA's --horizontal-pod-autoscaler-tolerance


@dataclass(frozen=True)
class QueuePolicy:
    """One queue's scaling settings (``scaling.<queue>_*`` and the shared ones)."""

    queue: str
    min_workers: int = 1
    max_workers: int = 4
    target_per_worker: float = 10.0
    stabilization_window: float = 300.0  # seconds
    activation: int = 0  # with min_workers 0: load at or below this keeps the pool at zero
    tolerance: float = TOLERANCE

    def __post_init__(self) -> None:
        if self.min_workers < 0 or self.max_workers < max(1, self.min_workers):
            raise ValueError(
                f"{self.queue}: need 0 <= min_workers <= max_workers, max >= 1 "
                f"(got {self.min_workers}..{self.max_workers})"
            )
        if self.target_per_worker <= 0:
            raise ValueError(f"{self.queue}: target_per_worker must be > 0")


@dataclass(frozen=True)
class QueueLoad:
    """What the collector measured of one queue; None where nothing was measured."""

    queue: str
    ready: int | None
    unacked: int | None
    workers: int | None  # workers consuming the queue now (the current count)
    measured_at: float | None  # epoch seconds of the oldest of the three readings

    @property
    def total(self) -> int:
        return (self.ready or 0) + (self.unacked or 0)


@dataclass(frozen=True)
class Recommendation:
    """A past decision's recommendation, for the scale-down window."""

    at: float
    recommended: int


@dataclass(frozen=True)
class ScalingDecision:
    """One queue's decision: the count to run (None: no action), why, and from what."""

    queue: str
    action: str  # up | down | none (nothing to do, or nothing known) | hold (window holds it)
    current: int | None
    desired: int | None
    recommended: int | None  # before the rate limit and window: what the window remembers
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return self.desired is not None and self.desired != self.current

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_scale(
    policy: QueuePolicy,
    load: QueueLoad,
    history: Iterable[Recommendation],
    now: float,
    max_age: float,
    override: int | None = None,
) -> ScalingDecision:
    """The decision for one queue now; ``history``: this queue's earlier recommendations,
    ``max_age``: seconds after which a reading is too old to act on, ``override``: a
    manual count (``lewis scale set``) that replaces the policy while it lasts."""
    inputs = {
        "ready": load.ready,
        "unacked": load.unacked,
        "workers": load.workers,
        "measured_at": load.measured_at,
        "now": now,
        "policy": asdict(policy),
    }
    missing = [n for n in ("ready", "unacked", "workers") if getattr(load, n) is None]
    if missing or load.measured_at is None:
        return ScalingDecision(
            policy.queue,
            NONE,
            load.workers,
            None,
            None,
            f"no action: no {', '.join(missing) or 'timestamp'} measured for "
            f"queue {policy.queue} yet (the collector writes them)",
            inputs,
        )
    age = now - load.measured_at
    if age > max_age:
        return ScalingDecision(
            policy.queue,
            NONE,
            load.workers,
            None,
            None,
            f"no action: metrics are stale ({age:.0f}s old, limit "
            f"{max_age:.0f}s; is the collector running?)",
            inputs,
        )
    current = int(load.workers or 0)
    if override is not None:
        inputs["override"] = override
        return _finish(
            policy.queue,
            current,
            override,
            override,
            f"manual override: {override} worker(s) (`lewis scale set`)",
            inputs,
        )
    recommended, why = recommend(policy, load.total, current)
    if recommended > current:
        limit = current + max(current, SCALE_UP_PODS)
        desired = min(recommended, limit)
        if desired < recommended:
            why += f"; scale-up limited to {desired} (+100 % or +{SCALE_UP_PODS} per period)"
        return _finish(policy.queue, current, desired, recommended, why, inputs)
    if recommended < current:
        window = [h.recommended for h in history if now - h.at < policy.stabilization_window]
        highest = max([recommended, *window])
        desired = min(current, highest)
        if desired > recommended:
            why += (
                f"; scale-down held at {desired}: the highest recommendation of the last "
                f"{policy.stabilization_window:g}s"
            )
            return ScalingDecision(
                policy.queue,
                HOLD if desired == current else DOWN,
                current,
                desired,
                recommended,
                why,
                inputs,
            )
        return _finish(policy.queue, current, desired, recommended, why, inputs)
    return _finish(policy.queue, current, current, recommended, why, inputs)


def recommend(policy: QueuePolicy, load: int, current: int) -> tuple[int, str]:
    """The count this load asks for (tolerance and bounds applied), and why."""
    if policy.min_workers == 0 and load <= policy.activation:
        return 0, (
            f"load {load} at or below the activation threshold {policy.activation}: scale to zero"
        )
    raw = math.ceil(load / policy.target_per_worker)
    why = f"load {load} / target {policy.target_per_worker:g} per worker -> {raw}"
    capacity = current * policy.target_per_worker
    # |load / capacity - 1| <= tolerance, multiplied out (11 / 10 - 1 is 0.10000000000000009);
    # with no worker it holds only for no load, where ceil(0 / target) is 0 as well
    if abs(load - capacity) <= policy.tolerance * capacity:
        raw = current
        why = (
            f"load {load} within {policy.tolerance:g} of the target for {current} worker(s) "
            f"({policy.target_per_worker:g} each)"
        )
    floor = max(policy.min_workers, 1)  # past the activation threshold a zero pool wakes
    clamped = min(max(raw, floor), policy.max_workers)
    if clamped != raw:
        why += f", clamped to [{floor}, {policy.max_workers}] -> {clamped}"
    return clamped, why


def _finish(
    queue: str, current: int, desired: int, recommended: int, why: str, inputs: dict[str, Any]
) -> ScalingDecision:
    action = UP if desired > current else DOWN if desired < current else NONE
    return ScalingDecision(queue, action, current, desired, recommended, why, inputs)


# --- vertical advice (the guide's VerticalScaler thresholds) ---------------------------------

CPU_HIGH, CPU_LOW = 80.0, 30.0
MEMORY_HIGH, MEMORY_LOW = 85.0, 40.0
GROW, SHRINK, KEEP = "grow", "shrink", "keep"


@dataclass(frozen=True)
class VerticalAdvice:
    """Grow or shrink one worker's pool, and why; advice only, never acted on by itself."""

    worker: str
    advice: str  # grow | shrink | keep
    reason: str
    cpu_percent: float
    memory_percent: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def advise_pool(worker: str, cpu_percent: float, memory_percent: float) -> VerticalAdvice:
    """Pool advice for a worker from its CPU (% of its cores) and memory (% of the host's).

    Memory pressure comes first: a bigger pool would only add resident children."""

    def advice(kind: str, reason: str) -> VerticalAdvice:
        return VerticalAdvice(worker, kind, reason, cpu_percent, memory_percent)

    if memory_percent > MEMORY_HIGH:
        return advice(
            SHRINK, f"memory {memory_percent:.0f}% > {MEMORY_HIGH:.0f}%: fewer pool processes"
        )
    if cpu_percent > CPU_HIGH:
        return advice(
            GROW,
            f"cpu {cpu_percent:.0f}% > {CPU_HIGH:.0f}%: saturated, more pool processes (or cores)",
        )
    if cpu_percent < CPU_LOW and memory_percent < MEMORY_LOW:
        return advice(
            SHRINK,
            f"cpu {cpu_percent:.0f}% < {CPU_LOW:.0f}% and memory "
            f"{memory_percent:.0f}% < {MEMORY_LOW:.0f}%: mostly idle",
        )
    return advice(KEEP, f"cpu {cpu_percent:.0f}%, memory {memory_percent:.0f}%: within bounds")


__all__ = [
    "QueuePolicy",
    "QueueLoad",
    "Recommendation",
    "ScalingDecision",
    "decide_scale",
    "recommend",
    "VerticalAdvice",
    "advise_pool",
    "UP",
    "DOWN",
    "NONE",
    "HOLD",
    "GROW",
    "SHRINK",
    "KEEP",
]
