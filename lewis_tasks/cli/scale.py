"""``lewis scale status|plan|set|export``: the scaling decisions, what would happen now, a
manual override that expires, and KEDA ScaledObjects for teams that let KEDA act."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import click

from ..infra.config import SCALED_QUEUES
from . import cli


@cli.group()
def scale() -> None:
    """Scaling: decisions per queue (beat job lewis.control.decide_scaling), overrides, KEDA."""


def _store() -> Any:
    from ..errors import BrokerUnavailable
    from ..infra.config import get_settings
    from ..infra.metrics_store import store_from_settings

    settings = get_settings()
    if not settings.broker.url:
        raise BrokerUnavailable(
            f"no stack is running from {settings.home} and LEWIS_BROKER_URL "
            "is not set; `lewis up` starts one"
        )
    return store_from_settings()


@scale.command("status")
@click.option(
    "--last",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="Decisions shown per queue.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def scale_status(last: int, as_json: bool) -> None:
    """Per queue: workers now, wanted, the actuator, an override, the last decisions and why."""
    report = collect_scale_status(_store(), last)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(format_scale_status(report))


def collect_scale_status(store: Any, last: int = 3) -> dict[str, Any]:
    from ..infra.actuators import read_local
    from ..infra.config import get_settings
    from ..infra.database import get_engine
    from ..infra.scaling import read_loads, read_override
    from ..storage.db import session_scope
    from ..storage.scaling import latest_decisions

    settings = get_settings()
    loads = read_loads(store.latest())
    local = read_local(store.client)
    queues: dict[str, Any] = {}
    with session_scope(get_engine()) as session:
        for q in SCALED_QUEUES:
            rows = latest_decisions(session, q, limit=last)
            queues[q] = {
                "current": loads[q].workers,
                "load": loads[q].total,
                "desired": next((r.desired for r in rows if r.desired is not None), None),
                "override": read_override(store.client, q),
                "local": (local or {}).get("queues", {}).get(q),
                "decisions": [
                    {
                        "slot": r.slot,
                        "at": r.decided_at.isoformat(),
                        "action": r.action,
                        "current": r.current,
                        "desired": r.desired,
                        "reason": r.reason,
                        "actuator": r.actuator,
                        "error": r.error,
                    }
                    for r in rows
                ],
            }
    return {
        "actuator": settings.scaling.actuator,
        "interval": settings.scaling.interval,
        "supervisor": local is not None,
        "queues": queues,
    }


def format_scale_status(report: dict[str, Any]) -> str:
    lines = [
        f"actuator {report['actuator']}"
        + (" (a `lewis up` supervisor listens)" if report["supervisor"] else "")
        + f", a decision every {report['interval']:g}s",
        "",
    ]
    for q, row in report["queues"].items():
        current = "?" if row["current"] is None else row["current"]
        desired = "?" if row["desired"] is None else row["desired"]
        lines.append(f"{q:<5} workers {current} -> wanted {desired}  (load {row['load']})")
        if row["override"]:
            until = dt.datetime.fromtimestamp(row["override"]["until"], dt.UTC)
            lines.append(f"      override {row['override']['workers']} until {until:%H:%M:%S} UTC")
        if row["local"]:
            lines.append(
                f"      running {', '.join(row['local']['running']) or 'none'}"
                + (
                    f"; draining {', '.join(row['local']['draining'])}"
                    if row["local"]["draining"]
                    else ""
                )
            )
        for d in row["decisions"]:
            lines.append(
                f"      {d['at'][11:19]} {d['action']:<5} {d['current']}->{d['desired']}"
                f"  {d['reason']}" + (f"  FAILED: {d['error']}" if d["error"] else "")
            )
        if not row["decisions"]:
            lines.append("      no decision yet")
    return "\n".join(lines)


@scale.command("plan")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def scale_plan(as_json: bool) -> None:
    """What a decision would do now; nothing recorded, nothing done."""
    from ..infra.config import get_settings
    from ..infra.database import get_engine
    from ..infra.scaling import plan
    from ..storage.db import session_scope
    from ..storage.scaling import DecisionLedger

    ledger = DecisionLedger(lambda: session_scope(get_engine()))
    decisions = plan(get_settings(), _store(), ledger.history)
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in decisions], indent=2, default=str))
        return
    for d in decisions:
        target = "no action" if d.desired is None else f"{d.current} -> {d.desired}"
        click.echo(f"{d.queue:<5} {d.action:<5} {target}: {d.reason}")
        for advice in d.inputs.get("pool_advice") or []:
            click.echo(f"      pool {advice['advice']:<6} {advice['worker']}: {advice['reason']}")


@scale.command("set")
@click.argument("queue", type=click.Choice(SCALED_QUEUES))
@click.argument("workers")
@click.option(
    "--for",
    "duration",
    default="30m",
    show_default=True,
    help="How long the override lasts: 90s, 30m, 2h.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def scale_set(queue: str, workers: str, duration: str, as_json: bool) -> None:
    """Run WORKERS workers for QUEUE whatever the load, until --for runs out ('auto' ends it).

    The next decision (within scaling.interval) applies it."""
    from ..domain.metrics import parse_window
    from ..errors import InvalidInput
    from ..infra.scaling import clear_override, set_override

    store = _store()
    if workers == "auto":
        cleared = clear_override(store.client, queue)
        out: dict[str, Any] = {"queue": queue, "override": None, "cleared": cleared}
        text = f"{queue}: override {'ended' if cleared else 'was not set'}; the policy decides"
    else:
        if not workers.isascii() or not workers.isdigit():
            raise InvalidInput(f"workers must be a whole number or 'auto', got {workers!r}")
        until = set_override(store.client, queue, int(workers), parse_window(duration))
        out = {"queue": queue, "override": int(workers), "until": until}
        text = (
            f"{queue}: {workers} worker(s) until "
            f"{dt.datetime.fromtimestamp(until, dt.UTC):%Y-%m-%d %H:%M:%S} UTC "
            f"(in {until - time.time():.0f}s); `lewis scale set {queue} auto` ends it"
        )
    click.echo(json.dumps(out) if as_json else text)


@scale.command("export")
@click.option(
    "--keda",
    is_flag=True,
    required=True,
    help="KEDA ScaledObjects (Redis list trigger) per queue, as YAML.",
)
def scale_export(keda: bool) -> None:
    """Write what another autoscaler needs to act as LEWIS would (KEDA)."""
    from ..infra.config import get_settings
    from ..infra.keda import keda_yaml

    click.echo(keda_yaml(get_settings()), nl=False)


@cli.command("size")
@click.option("--scans-per-hour", type=click.FloatRange(0, 1e9), required=True)
@click.option(
    "--concurrent-users",
    type=click.IntRange(0, 10**6),
    default=1,
    show_default=True,
    help="Users who may start a scan at the same moment.",
)
@click.option("--retention-days", type=click.FloatRange(0, 36500), default=30, show_default=True)
@click.option("--network-intensive", is_flag=True, help="Double the io pool (the guide's factor).")
@click.option(
    "--ports-per-scan", type=click.IntRange(1, 65535 * 4096), default=1000, show_default=True
)
@click.option(
    "--http-requests-per-hour",
    type=click.FloatRange(0, 1e12),
    default=0,
    show_default=True,
    help="The HTTP share of the job mix.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def size_command(
    scans_per_hour: float,
    concurrent_users: int,
    retention_days: float,
    network_intensive: bool,
    ports_per_scan: int,
    http_requests_per_hour: float,
    as_json: bool,
) -> None:
    """Cores, memory, storage and workers per queue for a workload, from the rates the latest
    stored benchmark runs measured (`lewis bench run`); the derivation is printed."""
    from ..domain.sizing import Workload, costs_from_runs, size
    from ..errors import LewisError
    from ..report.runs import load_benchmark_runs

    try:
        costs = costs_from_runs(load_benchmark_runs(suite="cluster"), _worker_rss())
    except ValueError as exc:
        raise LewisError(str(exc)) from None
    work = Workload(
        scans_per_hour,
        concurrent_users,
        retention_days,
        network_intensive,
        ports_per_scan,
        http_requests_per_hour,
    )
    result = size(work, costs)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(
        f"cores {result.cores}, memory {result.memory_gb:g} GB, storage "
        f"{result.storage_gb:g} GB; workers io {result.workers['io']}, cpu "
        f"{result.workers['cpu']}, control {result.workers['control']}"
    )
    click.echo("\n".join(f"  {line}" for line in result.derivation))


def _worker_rss() -> float | None:
    """The median resident memory the workers last reported, if a broker answers."""
    import statistics

    from ..domain.metrics import parse_series

    try:
        latest = _store().latest()
    except Exception:  # no broker, or it does not answer: sizing goes on with the assumption
        return None
    rss = [v for s, (v, _) in latest.items() if parse_series(s)[0] == "lewis_worker_rss_bytes"]
    return statistics.median(rss) if rss else None
