"""The alert state machine, per rule and label set, with Prometheus' meaning of its durations.

On each evaluation at time ``ts`` (Prometheus' ``AlertingRule.Eval``):

* a label set whose condition holds and that has no live alert becomes **pending** with
  ``active_at = ts``; it turns **firing** on the first evaluation with
  ``ts - active_at >= for`` (at once when ``for`` is 0);
* a label set whose condition no longer holds (or whose series is gone): a pending alert is
  dropped (**inactive**, never notified); a firing one keeps firing while
  ``ts - keep_firing_since < keep_firing_for`` (``keep_firing_since`` is the first evaluation
  without the condition; the condition holding again clears it), then is **resolved** at
  ``ts``. A resolved alert is kept :data:`RESOLVED_RETENTION` seconds so the resolve reaches
  the notifiers; holding again afterwards starts a new pending alert.
* a rule whose metric has no data at all (unknown to the store, no sample in the window, or
  a stale gauge — a stalled collector) gets one **nodata** alert of its own, and its pending
  and firing alerts are held as they are until data returns: missing data is never read as
  "ok", so it resolves nothing. (A label set that vanishes while others still report is
  Prometheus' absent series: the condition no longer holds for it.)

The state is plain data: :func:`dump_states`/:func:`load_states` give JSON, so a restart in
the middle of ``for`` carries on where it was (Prometheus restores ``ALERTS_FOR_STATE``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .alerts import AUTO, Rule

INACTIVE, PENDING, FIRING, RESOLVED, NODATA = "inactive", "pending", "firing", "resolved", "nodata"
STATES = (INACTIVE, PENDING, FIRING, RESOLVED, NODATA)
RESOLVED_RETENTION = 900.0  # Prometheus' resolvedRetention: 15 m
NODATA_KEY = "#nodata"

Group = tuple[tuple[str, str], ...]  # the rule's `by` label values, sorted


@dataclass
class Alert:
    """One rule + label set; times are epoch seconds of evaluations."""

    rule: str
    labels: dict[str, str]
    state: str
    active_at: float
    value: float | None = None
    severity: str = "low"
    annotations: dict[str, str] = field(default_factory=dict)
    fired_at: float | None = None
    resolved_at: float | None = None
    keep_firing_since: float | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.labels, self.state == NODATA)

    def to_dict(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies field by field, a third of a tick's cost
        out = dict(self.__dict__)
        out["labels"], out["annotations"] = dict(self.labels), dict(self.annotations)
        return out

    def copy(self, **changes: Any) -> Alert:
        return Alert(**{**self.to_dict(), **changes})


@dataclass(frozen=True)
class Transition:
    """One change of state, as the history table and the notifiers see it."""

    rule: str
    fingerprint: str
    labels: dict[str, str]
    from_state: str
    to_state: str
    at: float
    value: float | None
    severity: str
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    """What one rule's condition gave: every label set's value, and where it holds."""

    values: Mapping[Group, float]
    active: frozenset[Group]
    nodata: bool = False  # no label set had data (and the rule does not read that as ok)


def fingerprint(rule: str, labels: Mapping[str, str], nodata: bool = False) -> str:
    if nodata:
        return f"{rule}{NODATA_KEY}"
    return rule + json.dumps(sorted(labels.items()), separators=(",", ":"))


def advance(
    rule: Rule, alerts: Mapping[str, Alert], result: Evaluation, ts: float
) -> tuple[dict[str, Alert], list[Transition]]:
    """The rule's alerts after the evaluation at ``ts``, and the transitions it made."""
    out: dict[str, Alert] = {}
    moves: list[Transition] = []

    def move(a: Alert, old: str) -> None:
        if old != a.state:
            moves.append(
                Transition(
                    a.rule,
                    a.fingerprint,
                    dict(a.labels),
                    old,
                    a.state,
                    ts,
                    a.value,
                    a.severity,
                    a.annotations.get("summary", ""),
                )
            )

    for group in sorted(result.active):
        labels = dict(group)
        fp = fingerprint(rule.name, labels)
        value = result.values[group]
        old = alerts.get(fp)
        if old is not None and old.state in (PENDING, FIRING):
            a = old.copy(keep_firing_since=None)  # holds again
        else:
            a = Alert(rule.name, labels, PENDING, active_at=ts)
        a.value, a.severity = value, rule.severity_of(value)
        a.annotations = rule.annotate(labels, value)
        before = old.state if old is not None and old.state in (PENDING, FIRING) else INACTIVE
        if a.state == PENDING and ts - a.active_at >= rule.for_:
            a.state, a.fired_at = FIRING, ts
        move(a, before)
        out[fp] = a
    for fp, old in alerts.items():
        if fp in out or old.state == NODATA:
            continue
        if result.nodata and old.state in (PENDING, FIRING):
            out[fp] = old.copy()  # nothing known: held as it was, never resolved by a gap
            continue
        a = old.copy()
        if a.state == PENDING:
            move(old.copy(state=INACTIVE), PENDING)
            continue
        if a.state == FIRING:
            if rule.keep_firing_for > 0:
                if a.keep_firing_since is None:
                    a.keep_firing_since = ts
                if ts - a.keep_firing_since < rule.keep_firing_for:
                    group = tuple(sorted(a.labels.items()))
                    if group in result.values:  # still measured, just not past the line
                        a.value = result.values[group]
                    out[fp] = a
                    continue
            a.state, a.resolved_at = RESOLVED, ts
            move(a, FIRING)
        if a.state == RESOLVED and ts - (a.resolved_at or ts) <= RESOLVED_RETENTION:
            out[fp] = a
    _advance_nodata(rule, alerts, result, ts, out, move)
    return out, moves


def _advance_nodata(
    rule: Rule,
    alerts: Mapping[str, Alert],
    result: Evaluation,
    ts: float,
    out: dict[str, Alert],
    move: Any,
) -> None:
    fp = fingerprint(rule.name, {}, nodata=True)
    old = alerts.get(fp)
    if result.nodata:
        severity = rule.severity if rule.severity != AUTO else "low"
        a = (
            old
            if old is not None
            else Alert(rule.name, {}, NODATA, active_at=ts, severity=severity)
        )
        a.annotations = {"summary": f"{rule.name}: no data for {', '.join(sorted(rule.metrics))}"}
        if old is None:
            move(a, INACTIVE)
        out[fp] = a
    elif old is not None:
        move(old.copy(state=INACTIVE), NODATA)


def advance_all(
    rules: Iterable[Rule], alerts: Mapping[str, Alert], results: Mapping[str, Evaluation], ts: float
) -> tuple[dict[str, Alert], list[Transition]]:
    """Every rule advanced; alerts of rules no longer configured are dropped."""
    by_rule: dict[str, dict[str, Alert]] = {}
    for fp, a in alerts.items():
        by_rule.setdefault(a.rule, {})[fp] = a
    out: dict[str, Alert] = {}
    moves: list[Transition] = []
    for rule in rules:
        new, changed = advance(rule, by_rule.get(rule.name, {}), results[rule.name], ts)
        out.update(new)
        moves += changed
    return out, moves


def dump_states(alerts: Mapping[str, Alert]) -> str:
    return json.dumps({fp: a.to_dict() for fp, a in alerts.items()}, sort_keys=True)


def load_states(text: str | bytes | None) -> dict[str, Alert]:
    if not text:
        return {}
    return {fp: Alert(**raw) for fp, raw in json.loads(text).items()}


__all__ = [
    "Alert",
    "Transition",
    "Evaluation",
    "Group",
    "advance",
    "advance_all",
    "fingerprint",
    "dump_states",
    "load_states",
    "STATES",
    "INACTIVE",
    "PENDING",
    "FIRING",
    "RESOLVED",
    "NODATA",
    "RESOLVED_RETENTION",
]
