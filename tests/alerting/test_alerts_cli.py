"""`lewis alerts` and friends on the real Redis and database: active, history, test, export,
`lewis_alerts` on /metrics, the count in `lewis status`."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from lewis_tasks.cli import cli
from lewis_tasks.domain.metrics import MetricBatch, series_key
from lewis_tasks.infra import config
from lewis_tasks.infra.alerting import drain_outbox, engine_from_settings
from lewis_tasks.infra.metrics_store import store_from_settings
from lewis_tasks.tasks.control import write_history
from tests.alerting.test_engine import put_depth


def lewis(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def fire(slots: int = 3) -> None:
    """Ticks of the engine over a queue of 500 (slot interval: the monitoring settings)."""
    import time

    engine = engine_from_settings()
    store = store_from_settings()
    first = engine.current_slot() - slots
    for slot in range(first, first + slots):
        at = slot * engine.interval
        put_depth(store, 500, min(at + 1, time.time()))
        engine.tick(slot, now=min(at + 2, time.time()))
    drain_outbox(engine.client, write_history)


def test_active_alerts_history_and_status(alert_settings: Any) -> None:
    assert "no active alerts" in lewis("alerts").output
    fire()
    out = lewis("alerts").output
    assert "firing" in out and "Backlog{queue_name=io}" in out and "queue io holds 500" in out
    rows = json.loads(lewis("alerts", "--json").output)
    firing = [r for r in rows if r["state"] == "firing"]
    assert [(r["rule"], r["severity"], r["value"]) for r in firing] == [
        ("Backlog", "critical", 500.0)
    ]  # 500 / 100 ≥ 1.5
    # the runtime histogram and the task counters were never reported: "no data", not ok
    assert {r["rule"] for r in rows if r["state"] == "nodata"} == {"Slow", "Failing"}
    history = json.loads(lewis("alerts", "history", "--since", "1h", "--json").output)
    assert [
        (h["rule"], h["from_state"], h["to_state"]) for h in history if h["rule"] == "Backlog"
    ] == [("Backlog", "inactive", "pending"), ("Backlog", "pending", "firing")]
    assert "pending -> firing" in lewis("alerts", "history").output
    from lewis_tasks.cli.alerts import alerts_status, format_alerts_status

    assert format_alerts_status({"alerts": alerts_status()}) == [
        "alerts   1 critical; 0 pending, 2 no data (`lewis alerts`)"
    ]


def test_lewis_alerts_on_metrics(alert_settings: Any) -> None:
    from lewis_tasks.monitor.exposition import render
    from lewis_tasks.monitor.view import MonitorView

    fire()
    view = MonitorView(store_from_settings())
    text = render(view).decode()
    assert 'lewis_alerts{alertname="Backlog",alertstate="firing",severity="critical"} 1.0' in text
    assert 'lewis_alerts{alertname="Slow",alertstate="nodata",severity="low"} 1.0' in text
    # the dashboard's frame lists them, the firing one first
    shown = view.frame()["alerts"]
    assert (shown[0]["rule"], shown[0]["state"], shown[0]["summary"]) == (
        "Backlog",
        "firing",
        "queue io holds 500",
    )


def test_alerts_test_explains_one_rule_now(alert_settings: Any) -> None:
    put_depth(store_from_settings(), 150, time.time())
    out = lewis("alerts", "test", "Backlog").output
    assert "queue_name=io: value 150 — holds; now inactive, next evaluation pending" in out
    lonely = lewis("alerts", "test", "Lonely").output  # no worker count reported yet
    assert "and last(celery_active_worker_count[5m]) == 0: value - — does not hold" in lonely
    batch = MetricBatch()
    batch.gauge(
        series_key("celery_active_worker_count", {"queue_name": "io"}),
        "celery_active_worker_count",
        0.0,
        time.time(),
    )
    store_from_settings().write(batch)
    lonely = lewis("alerts", "test", "Lonely").output
    assert "queue_name=io: value 150 — holds" in lonely
    assert "and last(celery_active_worker_count[5m]) == 0: value 0 — holds" in lonely
    failing = json.loads(lewis("alerts", "test", "Failing", "--json").output)
    assert failing["nodata"] is True  # the task counters were never reported
    report = json.loads(lewis("alerts", "test", "Slow", "--json").output)
    assert report["nodata"] is True and report["label_sets"] == []
    result = CliRunner().invoke(cli, ["alerts", "test", "Nope"])
    assert result.exit_code == 2 and "no alert rule named 'Nope'" in result.output
    assert engine_from_settings().load() == (None, {})  # trying a rule stores nothing


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (scripts/ci-deps installs prometheus)",
)
@pytest.mark.parametrize("defaults", [True, False])
def test_export_is_a_rules_file_promtool_accepts(
    alert_settings: Any, tmp_path: Path, defaults: bool
) -> None:
    config.set_settings(config.replace_section(alert_settings, "alerts", default_rules=defaults))
    path = tmp_path / "lewis.rules.yml"
    lewis("alerts", "export", "--prometheus", "-o", str(path))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    expected = 4 + 4 + (9 + 8 if defaults else 0)  # + a NoData rule per "nodata" rule
    assert f"SUCCESS: {expected} rules found" in checked.stdout
    text = path.read_text()
    assert "histogram_quantile(0.95, sum by (le) (rate(celery_task_runtime_bucket[5m])))" in text
    assert "keep_firing_for: 1m" in text and "and on (name)" in text
