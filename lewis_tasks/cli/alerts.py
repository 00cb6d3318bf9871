"""``lewis alerts``: active alerts, their history, one rule tried now, the Prometheus export."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Any

import click

from ..errors import ConfigError
from . import cli


def _engine() -> Any:
    from ..infra.alerting import engine_from_settings
    from ..infra.config import get_settings

    if not get_settings().broker.url:
        raise ConfigError("no broker: set LEWIS_BROKER_URL, or start the stack with `lewis up`")
    return engine_from_settings()


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    seconds = max(0.0, time.time() - ts)
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _value(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def active_rows() -> list[dict[str, Any]]:
    """Pending, firing and nodata alerts, worst first, as plain data."""
    from ..infra.alerting import active_alerts

    _, alerts = _engine().load()
    return [
        {
            "rule": a.rule,
            "labels": a.labels,
            "state": a.state,
            "severity": a.severity,
            "since": a.fired_at if a.state == "firing" else a.active_at,
            "value": a.value,
            "summary": a.annotations.get("summary", ""),
        }
        for a in active_alerts(alerts)
    ]


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def alerts(ctx: click.Context, as_json: bool) -> None:
    """Active alerts (firing, pending, no data): severity, since when, value, summary."""
    if ctx.invoked_subcommand is not None:
        return
    rows = active_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no active alerts")
        return
    click.echo(f"{'state':<9}{'severity':<10}{'since':<10}{'value':>10}  alert")
    for r in rows:
        labels = ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))
        click.echo(
            f"{r['state']:<9}{r['severity']:<10}{_ago(r['since']):<10}"
            f"{_value(r['value']):>10}  {r['rule']}{'{' + labels + '}' if labels else ''}"
            f" — {r['summary']}"
        )


@alerts.command("history")
@click.option(
    "--since", "since", default="1h", show_default=True, help="How far back: 90s, 30m, 1h, 2d."
)
@click.option("--rule", default=None, help="Only this rule.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history(since: str, rule: str | None, as_json: bool) -> None:
    """Every transition (pending, firing, resolved, nodata) stored in the database."""
    from ..domain.metrics import parse_window
    from ..infra.database import get_engine
    from ..storage.alerts import alert_history
    from ..storage.db import session_scope

    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=parse_window(since))
    with session_scope(get_engine()) as session:
        rows = [r.to_dict() for r in alert_history(session, start, rule)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no alert transitions in the last {since}")
    for r in rows:
        labels = ",".join(f"{k}={v}" for k, v in sorted((r["labels"] or {}).items()))
        click.echo(
            f"{r['at'][:19]}  {r['rule']}{'{' + labels + '}' if labels else ''}  "
            f"{r['from_state']} -> {r['to_state']}  [{r['severity']}] "
            f"value {_value(r['value'])}  {r['summary']}"
        )


@alerts.command("test")
@click.argument("rule_name", metavar="RULE")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def test_rule(rule_name: str, as_json: bool) -> None:
    """Evaluate RULE now against the current metrics and explain the result (nothing is
    stored or sent)."""
    from ..domain.alerts import RuleSet
    from ..domain.alertstate import advance

    engine = _engine()
    rule = RuleSet(engine.rules).get(rule_name)
    now = time.time()
    frame = engine.frame(now, [rule])
    result = frame.evaluate(rule)
    extras = [(c, frame.values(c, rule.by) or {}) for c in rule.also]
    _, alerts = engine.load()
    mine = {fp: a for fp, a in alerts.items() if a.rule == rule.name}
    after, moves = advance(rule, mine, result, now)
    report = {
        "rule": rule.to_dict(),
        "condition": rule.condition.describe(),
        "nodata": result.nodata,
        "label_sets": [
            {
                "labels": dict(g),
                "value": v,
                "holds": g in result.active,
                "state_now": next(
                    (a.state for a in mine.values() if tuple(sorted(a.labels.items())) == g),
                    "inactive",
                ),
                "state_next": next(
                    (
                        a.state
                        for a in after.values()
                        if tuple(sorted(a.labels.items())) == g and a.state != "nodata"
                    ),
                    "inactive",
                ),
                "and": [
                    {
                        "condition": c.describe(),
                        "value": vals.get(g),
                        "holds": g in vals and c.holds(vals[g]),
                    }
                    for c, vals in extras
                ],
            }
            for g, v in sorted(result.values.items())
        ],
        "would_change": [m.to_dict() for m in moves],
    }
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(
        f"{rule.name}: {report['condition']}, for {rule.for_:g}s, "
        f"keep_firing_for {rule.keep_firing_for:g}s, severity {rule.severity}"
    )
    if result.nodata:
        click.echo(
            f"  no data: {', '.join(sorted(rule.metrics))} has no sample in the window "
            "(or is stale, or was never reported) — shown as 'nodata', not ok"
        )
    elif not result.values:
        click.echo("  no label set has a value in the window")
    for row in report["label_sets"]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(row["labels"].items())) or "(all)"
        verdict = "holds" if row["holds"] else "does not hold"
        click.echo(
            f"  {labels}: value {_value(row['value'])} — {verdict}; "
            f"now {row['state_now']}, next evaluation {row['state_next']}"
        )
        for extra in row["and"]:
            click.echo(
                f"    and {extra['condition']}: value {_value(extra['value'])} — "
                f"{'holds' if extra['holds'] else 'does not hold'}"
            )


@alerts.command("export")
@click.option(
    "--prometheus",
    is_flag=True,
    required=True,
    help="Write a Prometheus rules file (the only format for now).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="File to write (default: stdout).",
)
def export(prometheus: bool, output: str | None) -> None:
    """The rules as a Prometheus rules file over the /metrics names (`promtool check rules`)."""
    import yaml

    from ..domain.alertexport import prometheus_rules
    from ..infra.config import get_settings

    settings = get_settings()
    kinds: dict[str, str] = {}
    if settings.broker.url:  # the store knows each metric's kind; without it, by their names
        try:
            kinds = _engine().store.kinds()
        except Exception:  # noqa: BLE001 - exporting needs no running stack
            kinds = {}
    doc = prometheus_rules(settings.alerts.all_rules, kinds, settings.alerts.evaluation_interval)
    text = "# generated by `lewis alerts export --prometheus`\n" + yaml.safe_dump(
        doc, sort_keys=False, allow_unicode=True, width=100
    )
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
        click.echo(f"wrote {len(doc['groups'][0]['rules'])} rules to {output}", err=True)
    else:
        sys.stdout.write(text)


def alerts_status() -> dict[str, Any]:
    """Counts by severity of firing alerts (and nodata/pending) for `lewis status`."""
    try:
        rows = active_rows()
    except Exception as exc:  # status prints even if alerts are unreadable
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    firing: dict[str, int] = {}
    for r in rows:
        if r["state"] == "firing":
            firing[r["severity"]] = firing.get(r["severity"], 0) + 1
    return {
        "firing": firing,
        "pending": sum(r["state"] == "pending" for r in rows),
        "nodata": sum(r["state"] == "nodata" for r in rows),
    }


def format_alerts_status(report: dict[str, Any]) -> list[str]:
    a = report.get("alerts") or {}
    if "error" in a:
        return [f"alerts   unavailable ({a['error']})"]
    order = ("critical", "high", "medium", "low")
    firing = a.get("firing") or {}
    counts = ", ".join(f"{firing[s]} {s}" for s in order if firing.get(s)) or "none firing"
    return [
        f"alerts   {counts}; {a.get('pending', 0)} pending, {a.get('nodata', 0)} no data "
        "(`lewis alerts`)"
    ]
