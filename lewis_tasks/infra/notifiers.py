"""Sending alerts: the log line, a webhook (Alertmanager's format), Alertmanager's API.

Runs in its own task (``lewis.control.notify_alerts``), never on the evaluation path. What
each receiver was last sent lives in Redis (``lewis:alerts:sent:<receiver>``), written after
a send succeeds: a receiver that failed is sent again on the retry, one that succeeded is not,
and a second run (another beat, a restart) finds nothing due. One run at a time (a lock).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from ..domain.alertnotify import (
    GroupNotice,
    Sent,
    alertmanager_alerts,
    alertmanager_due,
    due_groups,
    group_alerts,
    log_line,
    webhook_payload,
)
from ..domain.alerts import Rule
from ..domain.alertstate import Alert
from ..domain.redact import redact_url
from ..errors import TransientError
from .alerting import PREFIX

log = logging.getLogger(__name__)

Post = Callable[[str, Any, float], None]


def post_json(url: str, body: Any, timeout: float) -> None:
    """POST ``body`` as JSON; TransientError on anything but a 2xx answer."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "lewis-tasks-alerts"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read()
    except urllib.error.HTTPError as exc:
        raise TransientError(f"{redact_url(url)} answered {exc.code}") from None
    except (OSError, ValueError) as exc:  # refused, timed out, reset
        raise TransientError(f"{redact_url(url)} unreachable: {exc}") from None


@dataclass
class NotifyResult:
    sent: dict[str, int] = field(default_factory=dict)  # receiver → groups/alerts sent
    failures: list[str] = field(default_factory=list)
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "failures": self.failures, "skipped": self.skipped}


@dataclass(frozen=True)
class Receivers:
    """Where notifications go, from ``alerts.*`` settings."""

    log: bool = True
    webhook_url: str = ""
    alertmanager_url: str = ""
    group_by: tuple[str, ...] = ("alertname",)
    repeat_interval: float = 14400.0
    resend_delay: float = 60.0
    evaluation_interval: float = 15.0
    timeout: float = 5.0
    external_url: str = "http://127.0.0.1"

    @classmethod
    def from_settings(cls, a: Any) -> Receivers:
        return cls(
            a.log,
            a.webhook_url,
            a.alertmanager_url,
            tuple(a.group_by),
            float(a.repeat_interval),
            float(a.resend_delay),
            float(a.evaluation_interval),
            float(a.notify_timeout),
            a.external_url,
        )


class Notifier:
    """One notification run over the committed alert state."""

    def __init__(
        self,
        client: redis.Redis,
        rules: Sequence[Rule],
        receivers: Receivers,
        post: Post = post_json,
        prefix: str = PREFIX,
    ) -> None:
        self.client = client
        self.rules = {r.name: r for r in rules}
        self.receivers = receivers
        self.post = post
        self.prefix = prefix

    def run(self, alerts: Mapping[str, Alert], now: float | None = None) -> NotifyResult:
        now = time.time() if now is None else now
        # held at most one run's worth of timeouts: a killed run blocks the next ones no longer
        lock = self.client.lock(
            f"{self.prefix}:notify:lock",
            timeout=max(10.0, 4 * self.receivers.timeout),
            blocking=False,
        )
        if not lock.acquire():
            return NotifyResult(skipped=True)  # another run holds it; the next run covers us
        try:
            result = NotifyResult()
            r = self.receivers
            if r.log:
                self._grouped("log", alerts, now, result, self._send_log)
            if r.webhook_url:
                self._grouped("webhook", alerts, now, result, self._send_webhook)
            if r.alertmanager_url:
                self._alertmanager(alerts, now, result)
            return result
        finally:
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()

    def _send_log(self, notice: GroupNotice) -> None:
        log.warning("%s", log_line(notice))

    def _send_webhook(self, notice: GroupNotice) -> None:
        body = webhook_payload(notice, self.rules, "lewis", self.receivers.external_url)
        self.post(self.receivers.webhook_url, body, self.receivers.timeout)

    def _grouped(
        self,
        name: str,
        alerts: Mapping[str, Alert],
        now: float,
        result: NotifyResult,
        send: Callable[[GroupNotice], None],
    ) -> None:
        key = f"{self.prefix}:sent:{name}"
        sent = {_text(k): Sent.from_json(v) for k, v in self.client.hgetall(key).items()}
        count = 0
        for notice in due_groups(
            alerts.values(),
            self.rules,
            self.receivers.group_by,
            sent,
            now,
            self.receivers.repeat_interval,
        ):
            try:
                send(notice)
            except TransientError as exc:
                result.failures.append(f"{name}: {exc}")
                return  # the rest on the retry, in order
            self.client.hset(key, notice.key, Sent(notice.firing_fingerprints, now).to_json())
            count += 1
        live = set(group_alerts(alerts.values(), self.rules, self.receivers.group_by))
        gone = [k for k in sent if k not in live]  # nothing firing or resolving: nothing to say
        if gone:
            self.client.hdel(key, *gone)
        result.sent[name] = count

    def _alertmanager(self, alerts: Mapping[str, Alert], now: float, result: NotifyResult) -> None:
        key = f"{self.prefix}:sent:alertmanager"
        pushed = {_text(k): float(v) for k, v in self.client.hgetall(key).items()}
        due = alertmanager_due(alerts.values(), pushed, now, self.receivers.resend_delay)
        if due:
            body = alertmanager_alerts(
                due,
                self.rules,
                now,
                self.receivers.resend_delay,
                self.receivers.evaluation_interval,
                self.receivers.external_url,
            )
            url = self.receivers.alertmanager_url.rstrip("/") + "/api/v2/alerts"
            try:
                self.post(url, body, self.receivers.timeout)
            except TransientError as exc:
                result.failures.append(f"alertmanager: {exc}")
                return
            self.client.hset(key, mapping={a.fingerprint: now for a in due})
        gone = [fp for fp in pushed if fp not in alerts]
        if gone:
            self.client.hdel(key, *gone)
        result.sent["alertmanager"] = len(due)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def notifier_from_settings(client: redis.Redis | None = None) -> Notifier:
    from .config import get_settings
    from .redis_client import get_redis

    settings = get_settings()
    return Notifier(
        client or get_redis(), settings.alerts.all_rules, Receivers.from_settings(settings.alerts)
    )


__all__ = ["Notifier", "NotifyResult", "Receivers", "post_json", "notifier_from_settings"]
