"""Notifiers against real peers: a loopback webhook receiver and a real Alertmanager."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from lewis_tasks.domain.alerts import parse_rule
from lewis_tasks.infra.alerting import AlertEngine
from lewis_tasks.infra.notifiers import Notifier, Receivers
from tests.alerting.test_engine import STEP, put_depth, store_of
from tests.support.alertpeers import ALERTMANAGER, alertmanager, am_alerts, webhook_receiver
from tests.support.procs import wait_for

RULE = parse_rule(
    {
        "name": "Backlog",
        "metric": "celery_queue_length",
        "aggregation": "last",
        "window": "30s",
        "threshold": 100,
        "for": "10s",
        "by": ["queue_name"],
        "severity": "high",
        "labels": {"team": "ops"},
        "annotations": {"summary": "queue {queue_name} holds {value}"},
    }
)


class Timeline:
    """The engine ticking one slot at a time over depths we write, on the real Redis."""

    def __init__(self, client: redis.Redis, slot: int = 1000) -> None:
        self.client = client
        self.store = store_of(client)
        self.engine = AlertEngine(self.store, [RULE], interval=STEP)
        self.slot = slot

    def step(self, depth: float) -> None:
        put_depth(self.store, depth, self.slot * STEP + 1)
        assert self.engine.tick(self.slot, now=self.slot * STEP + 2).committed
        self.slot += 1

    @property
    def now(self) -> float:
        return (self.slot - 1) * STEP + 3

    def alerts(self) -> dict:
        return self.engine.load()[1]


def notifier(client: redis.Redis, **receivers: object) -> Notifier:
    return Notifier(client, [RULE], Receivers(**{"log": False, **receivers}))  # type: ignore[arg-type]


def test_webhook_gets_firing_once_then_repeat_then_resolved(redis_client: redis.Redis) -> None:
    t = Timeline(redis_client)
    with webhook_receiver() as hook:
        n = notifier(redis_client, webhook_url=f"{hook.url}/hook", repeat_interval=3600.0)
        t.step(500)  # pending: nothing to say
        assert n.run(t.alerts(), now=t.now).sent == {"webhook": 0}
        t.step(500)  # firing
        n.run(t.alerts(), now=t.now)
        # a second beat's run, or a restarted process, sends nothing more
        notifier(redis_client, webhook_url=f"{hook.url}/hook").run(t.alerts(), now=t.now + 1)
        bodies = hook.accepted()
        assert [b["status"] for b in bodies] == ["firing"]
        body = bodies[0]
        assert body["version"] == "4" and body["groupLabels"] == {"alertname": "Backlog"}
        alert = body["alerts"][0]
        assert alert["labels"] == {
            "alertname": "Backlog",
            "queue_name": "io",
            "severity": "high",
            "team": "ops",
        }
        assert alert["annotations"]["summary"] == "queue io holds 500"
        assert alert["endsAt"] == "0001-01-01T00:00:00Z" and alert["startsAt"].endswith("Z")
        # repeat_interval later, still firing: sent again
        n.run(t.alerts(), now=t.now + 3600)
        t.step(10)  # resolved
        n.run(t.alerts(), now=t.now + 3601)
        n.run(t.alerts(), now=t.now + 3602)
        assert [b["status"] for b in hook.accepted()] == ["firing", "firing", "resolved"]
        assert hook.accepted()[-1]["alerts"][0]["status"] == "resolved"


def test_a_receiver_answering_500_is_sent_again_and_the_others_are_not(
    redis_client: redis.Redis,
) -> None:
    t = Timeline(redis_client)
    with webhook_receiver(500) as hook, webhook_receiver() as am:
        n = notifier(redis_client, webhook_url=f"{hook.url}/hook", alertmanager_url=am.url)
        t.step(500)
        t.step(500)
        first = n.run(t.alerts(), now=t.now)
        assert first.failures and "answered 500" in first.failures[0]
        assert len(am.accepted("/api/v2/alerts")) == 1  # the other receiver is not held up
        second = n.run(t.alerts(), now=t.now + 1)  # the retry
        assert not second.failures
        assert [b["status"] for b in hook.accepted()] == ["firing"] and hook.answered(500) == 1
        assert len(am.accepted("/api/v2/alerts")) == 1  # pushed again only after resend_delay


@pytest.mark.skipif(
    ALERTMANAGER is None,
    reason="prometheus-alertmanager not installed (scripts/ci-deps installs it)",
)
def test_a_real_alertmanager_shows_the_alert_and_receives_its_resolve(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    t = Timeline(redis_client, slot=int(time.time() // STEP) - 3)  # Alertmanager reads clocks
    with webhook_receiver() as hook, alertmanager(tmp_path, hook.url) as am_url:
        n = notifier(redis_client, alertmanager_url=am_url, external_url="http://127.0.0.1:9999")
        t.step(500)
        t.step(500)  # firing
        assert n.run(t.alerts(), now=t.now).sent == {"alertmanager": 1}
        shown = am_alerts(am_url)
        assert len(shown) == 1
        alert = shown[0]
        assert alert["labels"] == {
            "alertname": "Backlog",
            "queue_name": "io",
            "severity": "high",
            "team": "ops",
        }
        assert alert["status"]["state"] == "active"
        assert alert["generatorURL"] == "http://127.0.0.1:9999/#alert=Backlog"
        assert alert["annotations"]["summary"] == "queue io holds 500"
        # Alertmanager routes it to its own receiver
        wait_for(
            lambda: any(b["status"] == "firing" for b in hook.accepted("/am")),
            30,
            what="alertmanager's firing notification",
        )
        # When the queue drains and the resolve is pushed
        t.step(10)
        assert n.run(t.alerts(), now=t.now).sent == {"alertmanager": 1}
        # Then Alertmanager no longer lists it active and sends the resolve on
        wait_for(
            lambda: not [a for a in am_alerts(am_url) if a["status"]["state"] == "active"],
            30,
            what="the alert ended in alertmanager",
        )
        wait_for(
            lambda: any(b["status"] == "resolved" for b in hook.accepted("/am")),
            30,
            what="alertmanager's resolved notification",
        )


def test_a_refire_whose_resolve_never_got_out_is_sent_again(redis_client: redis.Redis) -> None:
    t = Timeline(redis_client)
    with webhook_receiver() as hook:
        n = notifier(redis_client, webhook_url=f"{hook.url}/hook")
        t.step(500)
        t.step(500)  # firing: sent
        n.run(t.alerts(), now=t.now)
        t.step(10)  # resolved, but no notify ran (a lost task, a receiver down) …
        t.step(500)  # … pending again
        t.step(500)  # firing again
        n.run(t.alerts(), now=t.now)
        assert [b["status"] for b in hook.accepted()] == ["firing", "firing"]
        starts = [b["alerts"][0]["startsAt"] for b in hook.accepted()]
        assert starts[0] < starts[1]


def test_a_receiver_down_or_slow_is_a_failure_to_retry_not_a_hang(
    redis_client: redis.Redis,
) -> None:
    from lewis_tasks.infra.redis_server import free_port

    t = Timeline(redis_client)
    t.step(500)
    t.step(500)
    down = notifier(redis_client, webhook_url=f"http://127.0.0.1:{free_port()}/hook")
    result = down.run(t.alerts(), now=t.now)
    assert len(result.failures) == 1 and "unreachable" in result.failures[0]
    with webhook_receiver(delay=2.0) as slow:
        late = notifier(redis_client, webhook_url=f"{slow.url}/hook", timeout=0.3)
        result = late.run(t.alerts(), now=t.now)
        assert len(result.failures) == 1 and "timed out" in result.failures[0]
    # nothing was recorded as sent: the next run (the retry) sends it
    with webhook_receiver() as hook:
        notifier(redis_client, webhook_url=f"{hook.url}/hook").run(t.alerts(), now=t.now + 1)
        assert [b["status"] for b in hook.accepted()] == ["firing"]
