"""The rules as a Prometheus rules file, over the names ``/metrics`` exposes (pure).

For teams that evaluate in Prometheus instead: the same threshold, ``for``,
``keep_firing_for``, labels and annotations, with each aggregation written in PromQL:

* gauge — ``last``: the sample; ``avg``/``max``/``min``/``p95``/``count``/``rate``: the
  ``*_over_time`` functions (``quantile_over_time(0.95, …)``, ``deriv``) over the window;
* counter (exposed as ``<name>_total``) — ``count``: ``increase``, ``rate``: ``rate``, the
  others over the per-minute increase as a subquery;
* histogram — ``p95``/``max``/``min``: ``histogram_quantile`` over ``_bucket`` (0.95, 1, 0),
  ``avg``: ``_sum`` / ``_count`` rates, ``count``/``rate``: ``_count``.

Severity ``auto`` becomes a label template comparing ``$value`` with the band edges
(threshold × 1.5 / 1.2 / 1.1), so Prometheus gives the same band LEWIS would.
"""

from __future__ import annotations

import re
from typing import Any

from .alerts import Condition, Rule, _dur

_FIELD = re.compile(r"\{(\w+)\}")


def _selector(metric: str, c: Condition) -> str:
    if not c.match:
        return metric
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in c.match) + "}"


def _by(by: tuple[str, ...], extra: str = "") -> str:
    names = ([extra] if extra else []) + list(by)
    return f" by ({', '.join(names)})" if names else ""


def _series(kind: str, metric: str, c: Condition, by: tuple[str, ...]) -> str:
    """One metric's aggregation in PromQL, per label set of ``by``."""
    w, a, grp = _dur(c.window), c.aggregation, _by(by)
    if kind == "histogram":
        if a in ("p95", "max", "min", "last"):
            q = {"p95": "0.95", "last": "0.95", "max": "1", "min": "0"}[a]
            return (
                f"histogram_quantile({q}, sum{_by(by, 'le')} "
                f"(rate({_selector(metric + '_bucket', c)}[{w}])))"
            )
        if a == "avg":
            return (
                f"sum{grp} (rate({_selector(metric + '_sum', c)}[{w}])) / "
                f"sum{grp} (rate({_selector(metric + '_count', c)}[{w}]))"
            )
        fn = "increase" if a == "count" else "rate"
        return f"sum{grp} ({fn}({_selector(metric + '_count', c)}[{w}]))"
    if kind == "counter":
        name = metric if metric.endswith("_total") else metric + "_total"
        sel = _selector(name, c)
        if a in ("count", "rate", "last"):
            fn = "rate" if a == "rate" else "increase"
            span = "1m" if a == "last" else w
            return f"sum{grp} ({fn}({sel}[{span}]))"
        inner = f"sum{grp} (increase({sel}[1m]))"
        if a == "p95":
            return f"quantile_over_time(0.95, ({inner})[{w}:1m])"
        return f"{a}_over_time(({inner})[{w}:1m])"
    sel = _selector(metric, c)
    if a == "last":
        return f"max{grp} ({sel})"
    if a == "p95":
        return f"max{grp} (quantile_over_time(0.95, {sel}[{w}]))"
    if a == "rate":
        return f"max{grp} (deriv({sel}[{w}]))"
    return f"max{grp} ({a}_over_time({sel}[{w}]))"


def condition_expr(
    c: Condition, by: tuple[str, ...], kinds: dict[str, str], compare: bool = True
) -> str:
    top = _series(kinds.get(c.metric) or guess_kind(c.metric), c.metric, c, by)
    if c.denominator:
        below = " + ".join(_series(kinds.get(m) or guess_kind(m), m, c, by) for m in c.denominator)
        top = f"({top}) / ({below})"
    return f"({top}) {c.comparison} {c.threshold!r}" if compare else top


def rule_expr(rule: Rule, kinds: dict[str, str]) -> str:
    expr = condition_expr(rule.condition, rule.by, kinds)
    on = f"on ({', '.join(rule.by)})"
    for extra in rule.also:
        expr = f"{expr} and {on} {condition_expr(extra, rule.by, kinds)}"
    return expr


def _severity(rule: Rule) -> str:
    if rule.severity != "auto":
        return rule.severity
    t, below = rule.condition.threshold, rule.condition.comparison in ("<", "<=")
    if below:  # ratio threshold / value ≥ band ⇔ value ≤ threshold / band
        edges = [(t / b, name) for b, name in ((1.5, "critical"), (1.2, "high"), (1.1, "medium"))]
        op = "le"
    else:
        edges = [(t * b, name) for b, name in ((1.5, "critical"), (1.2, "high"), (1.1, "medium"))]
        op = "ge"
    text = ""
    for i, (edge, name) in enumerate(edges):
        edge = float(f"{edge:.12g}")  # 93.5, not 93.50000000000001
        text += ("{{ if " if i == 0 else "{{ else if ") + f"{op} $value {edge!r} }}}}{name}"
    return text + "{{ else }}low{{ end }}"


def _template(text: str, rule: Rule) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "value":
            return "{{ $value }}"
        if key == "threshold":
            return f"{rule.condition.threshold:g}"
        if key == "name":
            return rule.name
        return f"{{{{ $labels.{key} }}}}"

    return _FIELD.sub(sub, text)


def prometheus_rule(rule: Rule, kinds: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"alert": rule.name, "expr": rule_expr(rule, kinds)}
    if rule.for_:
        out["for"] = _dur(rule.for_)
    if rule.keep_firing_for:
        out["keep_firing_for"] = _dur(rule.keep_firing_for)
    out["labels"] = {**dict(rule.labels), "severity": _severity(rule)}
    notes = {"summary": f"{rule.name}: {rule.condition.describe()}", **dict(rule.annotations)}
    out["annotations"] = {k: _template(v, rule) for k, v in notes.items()}
    return out


HISTOGRAMS = ("celery_task_runtime", "celery_task_queue_wait_time")


def guess_kind(metric: str) -> str:
    """A metric's kind by LEWIS' naming when the store has not seen it yet."""
    if metric.endswith("_total"):
        return "counter"
    return "histogram" if metric in HISTOGRAMS else "gauge"


def prometheus_rules(
    rules: list[Rule] | tuple[Rule, ...],
    kinds: dict[str, str],
    interval: float,
    group: str = "lewis",
) -> dict[str, Any]:
    """The ``groups:`` document ``promtool check rules`` reads; a rule that reads missing data
    as "nodata" also gets ``<name>NoData`` on ``absent()`` of its metric."""
    out = []
    for r in rules:
        out.append(prometheus_rule(r, kinds))
        if r.no_data == "nodata":
            out.append(_absent_rule(r, kinds))
    return {"groups": [{"name": group, "interval": _dur(interval), "rules": out}]}


def _absent_rule(rule: Rule, kinds: dict[str, str]) -> dict[str, Any]:
    metric = rule.condition.metric
    kind = kinds.get(metric) or guess_kind(metric)
    name = {
        "counter": metric if metric.endswith("_total") else metric + "_total",
        "histogram": metric + "_count",
    }.get(kind, metric)
    out: dict[str, Any] = {
        "alert": f"{rule.name}NoData",
        "expr": f"absent({_selector(name, rule.condition)})",
    }
    if rule.for_:
        out["for"] = _dur(rule.for_)
    out["labels"] = {**dict(rule.labels), "severity": "low"}
    out["annotations"] = {"summary": f"{rule.name}: no data for {metric}"}
    return out


__all__ = ["prometheus_rules", "prometheus_rule", "rule_expr", "guess_kind"]
