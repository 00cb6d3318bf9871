"""What to send, to whom, and when: grouping, repeat interval, Alertmanager's JSON (pure).

Two ways out, with Alertmanager's semantics:

* **grouped receivers** (log line, webhook in Alertmanager's webhook format, version 4): the
  firing and resolved alerts are grouped by ``alerts.group_by`` labels; a group is sent when
  its set of firing alerts changed since the last send to that receiver (a new one fired, one
  resolved) or, while something fires, every ``repeat_interval``. A receiver's last send per
  group (:class:`Sent`) is what makes a second beat, a retry or a restart send nothing twice.
* **Alertmanager's API** (``POST /api/v2/alerts``): every firing alert pushed at most every
  ``resend_delay`` with ``endsAt`` four resend delays ahead (Prometheus' ``ValidUntil``), so
  Alertmanager ends it by itself if LEWIS goes silent; a resolved one pushed once more with
  ``endsAt`` = its resolve time. Alertmanager does its own grouping and repeating.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .alerts import Rule
from .alertstate import FIRING, RESOLVED, Alert

ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end" in the webhook payload


def rfc3339(ts: float) -> str:
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def alert_labels(alert: Alert, rule: Rule | None) -> dict[str, str]:
    """The labels a receiver sees: the rule's, the label set's, alertname and severity."""
    return {
        **(dict(rule.labels) if rule else {}),
        **alert.labels,
        "alertname": alert.rule,
        "severity": alert.severity,
    }


def label_fingerprint(labels: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]


def generator_url(base: str, rule: str) -> str:
    return f"{base.rstrip('/')}/#alert={rule}"


@dataclass(frozen=True)
class Sent:
    """A receiver's last send of one group: the firing fingerprints and when."""

    firing: tuple[str, ...]
    at: float

    def to_json(self) -> str:
        return json.dumps({"firing": list(self.firing), "at": self.at})

    @classmethod
    def from_json(cls, text: str | bytes) -> Sent:
        raw = json.loads(text)
        return cls(tuple(raw["firing"]), float(raw["at"]))


@dataclass(frozen=True)
class GroupNotice:
    """One group due at a grouped receiver."""

    key: str
    group_labels: dict[str, str]
    firing: tuple[Alert, ...]
    resolved: tuple[Alert, ...]

    @property
    def firing_fingerprints(self) -> tuple[str, ...]:
        """Each firing alert as ``fingerprint@fired_at``: an alert that resolved and fired
        again is news even if its resolve never got out."""
        return tuple(sorted(f"{a.fingerprint}@{a.fired_at}" for a in self.firing))


def group_alerts(
    alerts: Iterable[Alert], rules: Mapping[str, Rule], group_by: Sequence[str]
) -> dict[str, tuple[dict[str, str], list[Alert]]]:
    """Firing and resolved alerts by group key (the ``group_by`` label values)."""
    out: dict[str, tuple[dict[str, str], list[Alert]]] = {}
    for a in alerts:
        if a.state not in (FIRING, RESOLVED):
            continue
        labels = alert_labels(a, rules.get(a.rule))
        group = {k: labels.get(k, "") for k in group_by}
        key = json.dumps(sorted(group.items()), separators=(",", ":"))
        out.setdefault(key, (group, []))[1].append(a)
    return out


def due_groups(
    alerts: Iterable[Alert],
    rules: Mapping[str, Rule],
    group_by: Sequence[str],
    sent: Mapping[str, Sent],
    now: float,
    repeat_interval: float,
) -> list[GroupNotice]:
    """The groups a grouped receiver must be sent now, given its last sends."""
    due = []
    for key, (group, members) in sorted(group_alerts(alerts, rules, group_by).items()):
        last = sent.get(key)
        firing = tuple(a for a in members if a.state == FIRING)
        # resolved: only what this receiver was told is firing (Alertmanager's send_resolved)
        told = {k.rsplit("@", 1)[0] for k in last.firing} if last is not None else set()
        resolved = tuple(a for a in members if a.state == RESOLVED and a.fingerprint in told)
        notice = GroupNotice(key, group, firing, resolved)
        changed = last is None or notice.firing_fingerprints != last.firing
        repeat = bool(firing) and last is not None and now - last.at >= repeat_interval
        if (changed or repeat) and (firing or resolved):
            due.append(notice)
    return due


def _webhook_alert(a: Alert, rule: Rule | None, base: str) -> dict[str, Any]:
    labels = alert_labels(a, rule)
    return {
        "status": "resolved" if a.state == RESOLVED else "firing",
        "labels": labels,
        "annotations": dict(a.annotations),
        "startsAt": rfc3339(a.fired_at or a.active_at),
        "endsAt": rfc3339(a.resolved_at) if a.resolved_at and a.state == RESOLVED else ZERO_TIME,
        "generatorURL": generator_url(base, a.rule),
        "fingerprint": label_fingerprint(labels),
    }


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def webhook_payload(
    notice: GroupNotice, rules: Mapping[str, Rule], receiver: str, base: str
) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) for one group."""
    alerts = [
        _webhook_alert(a, rules.get(a.rule), base) for a in (*notice.firing, *notice.resolved)
    ]
    group_text = ",".join(f'{k}="{v}"' for k, v in sorted(notice.group_labels.items()))
    return {
        "version": "4",
        "groupKey": f"{{}}:{{{group_text}}}",
        "truncatedAlerts": 0,
        "status": "firing" if notice.firing else "resolved",
        "receiver": receiver,
        "groupLabels": notice.group_labels,
        "commonLabels": _common([x["labels"] for x in alerts]),
        "commonAnnotations": _common([x["annotations"] for x in alerts]),
        "externalURL": base,
        "alerts": alerts,
    }


def log_line(notice: GroupNotice) -> str:
    """The log receiver's one line per group."""
    parts = [f"[{a.severity}] {a.annotations.get('summary', a.rule)}" for a in notice.firing]
    parts += [f"resolved: {a.annotations.get('summary', a.rule)}" for a in notice.resolved]
    group = ",".join(f"{k}={v}" for k, v in sorted(notice.group_labels.items()))
    return f"alerts {group}: {len(notice.firing)} firing, {len(notice.resolved)} resolved — " + (
        "; ".join(parts)
    )


def alertmanager_due(
    alerts: Iterable[Alert], pushed: Mapping[str, float], now: float, resend_delay: float
) -> list[Alert]:
    """Alerts to push to Alertmanager now: firing ones not pushed within ``resend_delay`` (or
    fired since), resolved ones not pushed since they resolved."""
    out = []
    for a in alerts:
        last = pushed.get(a.fingerprint)
        if (
            a.state == FIRING
            and (last is None or now - last >= resend_delay or (a.fired_at or 0) > last)
            or a.state == RESOLVED
            and (last is None or (a.resolved_at or 0) > last)
        ):
            out.append(a)
    return out


def alertmanager_alerts(
    alerts: Iterable[Alert],
    rules: Mapping[str, Rule],
    now: float,
    resend_delay: float,
    evaluation_interval: float,
    base: str,
) -> list[dict[str, Any]]:
    """``POST /api/v2/alerts`` body: postable alerts with startsAt/endsAt/generatorURL."""
    valid_for = 4 * max(resend_delay, evaluation_interval)
    out = []
    for a in alerts:
        ends = a.resolved_at if a.state == RESOLVED and a.resolved_at else now + valid_for
        out.append(
            {
                "labels": alert_labels(a, rules.get(a.rule)),
                "annotations": dict(a.annotations),
                "startsAt": rfc3339(a.fired_at or a.active_at),
                "endsAt": rfc3339(ends),
                "generatorURL": generator_url(base, a.rule),
            }
        )
    return out


__all__ = [
    "Sent",
    "GroupNotice",
    "due_groups",
    "group_alerts",
    "webhook_payload",
    "log_line",
    "alertmanager_due",
    "alertmanager_alerts",
    "alert_labels",
    "label_fingerprint",
    "rfc3339",
    "generator_url",
]
