"""Alert rules: what to watch, how to aggregate it, when it counts, how bad it is.

A :class:`Rule` compares one aggregation of a metric over a window (``avg``, ``max``,
``min``, ``p95``, ``rate``, ``count`` or ``last``) with a threshold, per label set of its
``by`` labels. ``for`` and ``keep_firing_for`` mean exactly what they mean in Prometheus
(``domain/alertstate.py`` runs them). Severity is fixed, or ``auto``: the guide's ratio bands
(value / threshold ≥ 1.5 critical, ≥ 1.2 high, ≥ 1.1 medium, else low).

Rules come from settings (``alerts.rules``) as plain mappings; :func:`parse_rule` turns one
into a Rule or raises InvalidInput with one line naming the rule and the bad key.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InvalidInput
from .metrics import parse_window, series_key

AGGREGATIONS = ("avg", "max", "min", "p95", "rate", "count", "last")
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
SEVERITIES = ("critical", "high", "medium", "low")
AUTO = "auto"
NO_DATA_MODES = ("nodata", "ok")  # "ok": no data means nothing is wrong (an idle histogram)
_RULE_KEYS = {
    "name",
    "metric",
    "aggregation",
    "window",
    "comparison",
    "threshold",
    "for",
    "keep_firing_for",
    "labels",
    "annotations",
    "severity",
    "by",
    "match",
    "denominator",
    "and",
    "no_data",
}
_CONDITION_KEYS = {
    "metric",
    "aggregation",
    "window",
    "comparison",
    "threshold",
    "match",
    "denominator",
}


@dataclass(frozen=True)
class Condition:
    """``aggregation(metric{match}) [/ aggregation(sum of denominator)] <comparison> threshold``."""

    metric: str
    aggregation: str = "avg"
    window: float = 300.0
    comparison: str = ">"
    threshold: float = 0.0
    match: tuple[tuple[str, str], ...] = ()
    denominator: tuple[str, ...] = ()  # metrics summed below the line (a ratio)

    def holds(self, value: float) -> bool:
        return COMPARISONS[self.comparison](value, self.threshold)

    def describe(self) -> str:
        sel = "{" + ",".join(f'{k}="{v}"' for k, v in self.match) + "}" if self.match else ""
        text = f"{self.aggregation}({self.metric}{sel}[{_dur(self.window)}])"
        if self.denominator:
            text += f" / {self.aggregation}({' + '.join(self.denominator)})"
        return f"{text} {self.comparison} {self.threshold:g}"


@dataclass(frozen=True)
class Rule:
    """One alert rule; ``labels``/``annotations`` are added to every alert it raises."""

    name: str
    condition: Condition
    for_: float = 0.0
    keep_firing_for: float = 0.0
    by: tuple[str, ...] = ()
    severity: str = AUTO
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    also: tuple[Condition, ...] = ()  # further conditions on the same label set ("and")
    no_data: str = "nodata"

    @property
    def metrics(self) -> set[str]:
        out = set()
        for c in (self.condition, *self.also):
            out |= {c.metric, *c.denominator}
        return out

    @property
    def longest_window(self) -> float:
        return max(c.window for c in (self.condition, *self.also))

    def severity_of(self, value: float) -> str:
        return (
            self.severity
            if self.severity != AUTO
            else severity_band(value, self.condition.threshold, self.condition.comparison)
        )

    def annotate(self, group: Mapping[str, str], value: float | None) -> dict[str, str]:
        """Annotations with ``{value}``, ``{threshold}``, ``{name}`` and label names filled in."""
        values = _Blank(
            {
                **dict(self.labels),
                **group,
                "name": self.name,
                "threshold": f"{self.condition.threshold:g}",
                "value": "no data" if value is None else f"{value:.4g}",
            }
        )
        out = {}
        for key, text in self.annotations:
            try:
                out[key] = text.format_map(values)
            except (ValueError, IndexError, AttributeError):  # a stray brace: shown as written
                out[key] = text
        out.setdefault("summary", f"{self.name}: {self.condition.describe()}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **_condition_dict(self.condition),
            "for": self.for_,
            "keep_firing_for": self.keep_firing_for,
            "by": list(self.by),
            "severity": self.severity,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "and": [_condition_dict(c) for c in self.also],
            "no_data": self.no_data,
        }


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _condition_dict(c: Condition) -> dict[str, Any]:
    return {
        "metric": c.metric,
        "aggregation": c.aggregation,
        "window": c.window,
        "comparison": c.comparison,
        "threshold": c.threshold,
        "match": dict(c.match),
        "denominator": list(c.denominator),
    }


def _dur(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def severity_band(value: float, threshold: float, comparison: str = ">") -> str:
    """The guide's bands on how far past the threshold: ×1.5 critical, ×1.2 high, ×1.1 medium.

    For ``<``/``<=`` rules the ratio is turned round (threshold / value); a zero below the line
    is infinitely far past it (critical).
    """
    num, den = (threshold, value) if comparison in ("<", "<=") else (value, threshold)
    ratio = math.inf if den == 0 else abs(num / den)
    for floor, name in ((1.5, "critical"), (1.2, "high"), (1.1, "medium")):
        if ratio >= floor:
            return name
    return "low"


# --- parsing ------------------------------------------------------------------------------


def _err(name: str, message: str) -> InvalidInput:
    return InvalidInput(f"alert rule {name!r}: {message}")


def _number(name: str, key: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise _err(name, f"{key} must be a number, got {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise _err(name, f"{key} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise _err(name, f"{key} must be a finite number, got {raw!r}")
    return value


def _duration(name: str, key: str, raw: Any, zero_ok: bool) -> float:
    if raw in (0, "0", "0s") and zero_ok:
        return 0.0
    try:
        return parse_window(raw)
    except InvalidInput as exc:
        raise _err(name, f"{key}: {exc}") from None


def _pairs(name: str, key: str, raw: Any) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise _err(name, f"{key} must be a mapping of names to strings, got {raw!r}")
    if any(isinstance(v, (Mapping, list)) for v in raw.values()):
        raise _err(name, f"{key} values must be strings, got {raw!r}")
    return tuple(sorted((k, str(v)) for k, v in raw.items()))


def _names(name: str, key: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [p.strip() for p in raw.replace("+", ",").split(",") if p.strip()]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise _err(name, f"{key} must be a list of names, got {raw!r}")
    return tuple(raw)


def _condition(name: str, raw: Mapping[str, Any], defaults: Condition | None = None) -> Condition:
    metric = raw.get("metric", defaults.metric if defaults else None)
    if not isinstance(metric, str) or not metric:
        raise _err(name, "metric is required (a name `lewis metrics` lists)")
    try:
        for m in (metric, *_names(name, "denominator", raw.get("denominator"))):
            series_key(m)
    except InvalidInput as exc:
        raise _err(name, str(exc)) from None
    agg = raw.get("aggregation", defaults.aggregation if defaults else "avg")
    if agg not in AGGREGATIONS:
        raise _err(name, f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {agg!r}")
    cmp_ = raw.get("comparison", defaults.comparison if defaults else ">")
    if cmp_ not in COMPARISONS:
        raise _err(name, f"comparison must be one of {' '.join(COMPARISONS)}, got {cmp_!r}")
    if "threshold" not in raw:
        raise _err(name, "threshold is required")
    window = raw.get("window", defaults.window if defaults else "5m")
    return Condition(
        metric=metric,
        aggregation=agg,
        window=_duration(name, "window", window, zero_ok=False),
        comparison=cmp_,
        threshold=_number(name, "threshold", raw["threshold"]),
        match=_pairs(name, "match", raw.get("match")),
        denominator=_names(name, "denominator", raw.get("denominator")),
    )


def parse_rule(raw: Any) -> Rule:
    """A Rule from its settings mapping; InvalidInput naming the rule and the bad key."""
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"alert rule {raw!r}: expected a mapping with name, metric, threshold")
    name = raw.get("name")
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise InvalidInput(f"alert rule {name!r}: name must be letters, digits, _ or -")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise _err(
            name, f"unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_RULE_KEYS))})"
        )
    condition = _condition(name, raw)
    also_raw = raw.get("and") or []
    if isinstance(also_raw, Mapping):
        also_raw = [also_raw]
    if not isinstance(also_raw, list):
        raise _err(name, f"and must be a condition or a list of them, got {also_raw!r}")
    also = []
    for extra in also_raw:
        if not isinstance(extra, Mapping) or set(extra) - _CONDITION_KEYS:
            raise _err(name, f"and: each condition takes {', '.join(sorted(_CONDITION_KEYS))}")
        also.append(_condition(name, extra, defaults=condition))
    severity = raw.get("severity", AUTO)
    if severity not in (*SEVERITIES, AUTO):
        raise _err(
            name, f"severity must be auto or one of {', '.join(SEVERITIES)}, got {severity!r}"
        )
    no_data = raw.get("no_data", "nodata")
    if no_data not in NO_DATA_MODES:
        raise _err(name, f"no_data must be one of {', '.join(NO_DATA_MODES)}, got {no_data!r}")
    labels = _pairs(name, "labels", raw.get("labels"))
    reserved = {"alertname", "severity", "alertstate"} & {k for k, _ in labels}
    if reserved:
        raise _err(name, f"labels may not set {sorted(reserved)[0]!r} (LEWIS sets it)")
    return Rule(
        name=name,
        condition=condition,
        for_=_duration(name, "for", raw.get("for", 0), zero_ok=True),
        keep_firing_for=_duration(
            name, "keep_firing_for", raw.get("keep_firing_for", 0), zero_ok=True
        ),
        by=_names(name, "by", raw.get("by")),
        severity=severity,
        labels=labels,
        annotations=_pairs(name, "annotations", raw.get("annotations")),
        also=tuple(also),
        no_data=no_data,
    )


def parse_rules(raws: Iterable[Any]) -> tuple[Rule, ...]:
    """Every rule parsed; a repeated name is an error too."""
    rules: list[Rule] = []
    seen: set[str] = set()
    for raw in raws:
        rule = parse_rule(raw)
        if rule.name in seen:
            raise _err(rule.name, "defined twice")
        seen.add(rule.name)
        rules.append(rule)
    return tuple(rules)


# --- the default rules --------------------------------------------------------------------

# The guide's PerformanceAlerting thresholds, by the guide's names (alerting.thresholds)
GUIDE_THRESHOLDS = {
    "cpu_usage": "HostCpuHigh",
    "memory_usage": "HostMemoryHigh",
    "disk_usage": "HostDiskFull",
    "response_time": "TaskRuntimeP95High",
    "error_rate": "TaskErrorRateHigh",
}

DEFAULT_RULES: tuple[dict[str, Any], ...] = (
    # the guide's five, with its ratio bands
    {
        "name": "HostCpuHigh",
        "metric": "lewis_host_cpu_percent",
        "aggregation": "avg",
        "window": "5m",
        "threshold": 85,
        "for": "5m",
        "by": ["hostname"],
        "annotations": {"summary": "CPU on {hostname} at {value} % (threshold {threshold} %)"},
    },
    {
        "name": "HostMemoryHigh",
        "metric": "lewis_host_memory_percent",
        "aggregation": "avg",
        "window": "5m",
        "threshold": 90,
        "for": "5m",
        "by": ["hostname"],
        "annotations": {"summary": "memory on {hostname} at {value} % (threshold {threshold} %)"},
    },
    {
        "name": "HostDiskFull",
        "metric": "lewis_host_disk_used_percent",
        "aggregation": "last",
        "window": "5m",
        "threshold": 95,
        "for": "5m",
        "by": ["hostname"],
        "annotations": {"summary": "disk on {hostname} {value} % full (threshold {threshold} %)"},
    },
    {
        "name": "TaskRuntimeP95High",
        "metric": "celery_task_runtime",
        "aggregation": "p95",
        "window": "5m",
        "threshold": 5,
        "for": "5m",
        "no_data": "ok",  # idle: no runtimes
        "annotations": {"summary": "task runtime p95 {value} s (threshold {threshold} s)"},
    },
    {
        "name": "TaskErrorRateHigh",
        "metric": "celery_task_failed_total",
        "aggregation": "count",
        "denominator": ["celery_task_succeeded_total", "celery_task_failed_total"],
        "window": "5m",
        "threshold": 0.05,
        "for": "5m",
        "annotations": {"summary": "{value} of tasks failed over 5m (threshold {threshold})"},
    },
    # celery-exporter's mixin
    {
        "name": "CeleryTaskHighFailRate",
        "metric": "celery_task_failed_total",
        "aggregation": "count",
        "denominator": ["celery_task_succeeded_total", "celery_task_failed_total"],
        "window": "10m",
        "threshold": 0.05,
        "for": "1m",
        "by": ["name", "queue"],
        "severity": "high",
        "annotations": {"summary": "task {name} failing: {value} of runs over 10m"},
    },
    {
        "name": "CeleryHighQueueLength",
        "metric": "celery_queue_length",
        "aggregation": "last",
        "window": "1m",
        "threshold": 100,
        "for": "20m",
        "by": ["queue_name"],
        "severity": "high",
        "annotations": {"summary": "queue {queue_name} holds {value} messages (over {threshold})"},
    },
    {
        "name": "CeleryWorkerDown",
        "metric": "celery_worker_up",
        "aggregation": "last",
        "window": "1m",
        "comparison": "<",
        "threshold": 1,
        "for": "15m",
        "by": ["hostname"],
        "severity": "critical",
        "annotations": {"summary": "worker {hostname} is down"},
    },
    # ours: messages wait and nobody takes them
    {
        "name": "QueueWithoutConsumer",
        "metric": "celery_queue_length",
        "aggregation": "last",
        "window": "1m",
        "threshold": 0,
        "for": "2m",
        "by": ["queue_name"],
        "severity": "critical",
        "and": {"metric": "celery_active_worker_count", "comparison": "==", "threshold": 0},
        "annotations": {"summary": "queue {queue_name} has {value} messages and no worker"},
    },
)


def default_rules(thresholds: Mapping[str, float] | None = None) -> tuple[Rule, ...]:
    """The defaults, with the guide's ``alert_thresholds`` names overriding theirs."""
    rules = list(parse_rules(DEFAULT_RULES))
    for guide_name, value in (thresholds or {}).items():
        if guide_name not in GUIDE_THRESHOLDS:
            raise InvalidInput(
                f"alerts.thresholds: unknown {guide_name!r} (known: {', '.join(GUIDE_THRESHOLDS)})"
            )
        target = GUIDE_THRESHOLDS[guide_name]
        number = _number(target, f"threshold ({guide_name})", value)
        if guide_name == "error_rate" and number > 1:
            number /= 100  # the guide writes 5.0 meaning 5 %
        rules = [
            replace(r, condition=replace(r.condition, threshold=number)) if r.name == target else r
            for r in rules
        ]
    return tuple(rules)


def merge_rules(defaults: Iterable[Rule], own: Iterable[Rule]) -> tuple[Rule, ...]:
    """The defaults with same-named rules of the operator's replacing them, then the rest."""
    own = list(own)
    names = {r.name for r in own}
    return (*[r for r in defaults if r.name not in names], *own)


@dataclass(frozen=True)
class RuleSet:
    """The rules in force, as settings hold them."""

    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def get(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise InvalidInput(
            f"no alert rule named {name!r} "
            f"(rules: {', '.join(r.name for r in self.rules) or 'none'})"
        )


__all__ = [
    "AGGREGATIONS",
    "COMPARISONS",
    "SEVERITIES",
    "AUTO",
    "Condition",
    "Rule",
    "RuleSet",
    "severity_band",
    "parse_rule",
    "parse_rules",
    "default_rules",
    "merge_rules",
    "DEFAULT_RULES",
    "GUIDE_THRESHOLDS",
]
