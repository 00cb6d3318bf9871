"""`alerts.*` settings: rules from lewis.yaml (ours or the guide's layout), a bad rule = exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from lewis_tasks.errors import ConfigError
from lewis_tasks.infra.config import load_settings
from tests.test_cli import lewis

RULE = """
    - name: BacklogIo
      metric: celery_queue_length
      aggregation: last
      match: {queue_name: io}
      threshold: 10
      for: 30s
      severity: high
"""


def test_rules_from_yaml_join_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "lewis.yaml").write_text(
        "alerts:\n  evaluation_interval: 5\n  group_by: [alertname, queue_name]\n"
        "  thresholds: {cpu_usage: 70}\n  rules:" + RULE
    )
    alerts = load_settings(env={}, cwd=tmp_path).alerts
    rules = {r.name: r for r in alerts.all_rules}
    assert alerts.evaluation_interval == 5 and alerts.group_by == ("alertname", "queue_name")
    assert rules["BacklogIo"].for_ == 30 and rules["BacklogIo"].condition.match == (
        ("queue_name", "io"),
    )
    assert rules["HostCpuHigh"].condition.threshold == 70 and len(rules) == 10


def test_the_guides_performance_alerting_layout(tmp_path: Path) -> None:
    (tmp_path / "lewis.yaml").write_text(
        "performance:\n  alerting:\n    default_rules: false\n    rules:" + RULE
    )
    assert [r.name for r in load_settings(env={}, cwd=tmp_path).alerts.all_rules] == ["BacklogIo"]


def test_rules_from_the_environment_as_json(tmp_path: Path) -> None:
    env = {
        "LEWIS_ALERTS_RULES": '[{"name": "A", "metric": "m", "threshold": 1}]',
        "LEWIS_ALERTS_DEFAULT_RULES": "false",
    }
    assert [r.name for r in load_settings(env=env, cwd=tmp_path).alerts.all_rules] == ["A"]
    with pytest.raises(ConfigError, match="alerts.alertmanager_url: .* not an HTTP URL"):
        load_settings(env={"LEWIS_ALERTS_ALERTMANAGER_URL": "ftp://x"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="alerts.thresholds: .*unknown 'cpu'"):
        load_settings(env={"LEWIS_ALERTS_THRESHOLDS": '{"cpu": 3}'}, cwd=tmp_path)


def test_a_bad_rule_stops_every_command_with_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "lewis.yaml"
    config.write_text(
        "alerts:\n  rules:" + RULE.replace("aggregation: last", "aggregation: median")
    )
    for command in (["status"], ["alerts"], ["metrics"]):
        result = lewis(
            *command, env={"LEWIS_CONFIG": str(config), "LEWIS_STACK_HOME": str(tmp_path)}
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert (
            len(lines) == 1
            and "setting alerts.rules: alert rule 'BacklogIo': aggregation" in (lines[0])
        )
