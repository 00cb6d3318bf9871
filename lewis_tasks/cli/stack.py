"""``lewis up``, ``lewis down``, ``lewis status``, ``lewis config``: the stack as a whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import click

from ..errors import BrokerUnavailable, LewisError
from . import SECONDS, Exit, cli


@cli.command()
@click.option("--detach", "-d", is_flag=True, help="Run in the background; `lewis down` stops it.")
@click.option(
    "--timeout",
    type=SECONDS,
    default=90.0,
    show_default=True,
    help="Seconds to wait for readiness.",
)
def up(detach: bool, timeout: float) -> None:
    """Run the whole stack here: Redis (unless LEWIS_BROKER_URL is set), io, cpu and control
    workers, beat and Flower, SQLite under the stack home. Ctrl-C stops everything."""
    from ..infra.config import get_settings
    from ..infra.supervisor import Stack

    settings = get_settings()
    if detach:
        _up_detached(settings.home, timeout)
        return
    stack = Stack(settings)
    stack.check_not_running()
    click.echo(f"starting the LEWIS stack in {settings.home}")
    began = time.monotonic()
    try:
        stack.start(ready_timeout=timeout, on_step=click.echo)
        stack.supervise(
            on_ready=lambda: click.echo(
                f"ready in {time.monotonic() - began:.1f}s — `lewis status` in another terminal; "
                "Ctrl-C stops the stack"
            )
        )
    finally:
        click.echo("stopping the stack…")
        stack.stop(on_step=click.echo)


def _up_detached(home: Any, timeout: float) -> None:
    from ..infra.config import read_stack_file

    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "stack.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lewis_tasks.cli", "up", "--timeout", str(timeout)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout + 5
    while time.monotonic() < deadline:
        info = read_stack_file(home)
        if info and info.get("ready") and info.get("supervisor_pid") == proc.pid:
            click.echo(log_path.read_text().strip())
            click.echo(f"stack running in the background (pid {proc.pid}); `lewis down` stops it")
            return
        if proc.poll() is not None:
            raise LewisError(f"the stack failed to start:\n{log_path.read_text().strip()[-2000:]}")
        time.sleep(0.3)
    proc.terminate()  # the supervisor stops what it started; nothing is left half-up
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    raise LewisError(
        f"the stack was not ready within {timeout:.0f}s and was stopped; see {log_path}"
    )


@cli.command()
def down() -> None:
    """Stop a stack started with `lewis up --detach`."""
    from ..infra.config import get_settings
    from ..infra.supervisor import stop_detached

    home = get_settings().home
    pid = stop_detached(home)
    if pid is None:
        click.echo(f"no stack is running from {home}")
    else:
        click.echo(f"stack (pid {pid}) stopped")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--timeout",
    type=SECONDS,
    default=1.5,
    show_default=True,
    help="Seconds to wait for the first ping reply (the rest then get a few of its "
    "round trips, at most 0.25 s; later ones are marked late).",
)
@click.option(
    "--watch", is_flag=True, help="Refresh every monitoring.metrics_interval seconds until Ctrl-C."
)
def status(as_json: bool, timeout: float, watch: bool) -> None:
    """Broker, workers per queue, queue depth (ready + unacked), beat and the last heartbeat.

    Exits 3 when the broker is down, 1 when a queue has no worker or no beat leads (a
    failover in progress included), else 0. `lewis health` is the probe-fast variant.
    """
    from ..infra.config import get_settings

    while True:
        report = collect_status(timeout)
        if as_json:
            click.echo(json.dumps(report, indent=2, default=str))
        else:
            if watch and sys.stdout.isatty():
                click.clear()
            click.echo(format_status(report))
        if not watch:
            break
        time.sleep(get_settings().monitoring.metrics_interval)
    if not report["broker"]["up"]:
        sys.exit(int(Exit.UNAVAILABLE))
    if report.get("problems"):
        sys.exit(int(Exit.FAILURE))


def collect_status(timeout: float) -> dict[str, Any]:
    from ..infra.broker import ping_round, queue_depths, workers_by_queue
    from ..infra.config import get_settings, redact_url
    from ..infra.fleet import leader
    from ..infra.redis_client import get_redis

    settings = get_settings()
    url = settings.broker.url
    if not url:
        raise BrokerUnavailable(
            f"no stack is running from {settings.home} and LEWIS_BROKER_URL "
            "is not set; `lewis up` starts one"
        )
    report: dict[str, Any] = {"broker": {"url": redact_url(url), "up": False}}
    client = get_redis(url, timeout=min(2.0, settings.broker.connect_timeout))
    started = time.perf_counter()
    try:
        client.ping()
    except Exception as exc:
        report["broker"]["error"] = _short(exc)
        return report
    report["broker"].update(up=True, ping_ms=round((time.perf_counter() - started) * 1000, 2))
    from ..infra.celery_app import app

    records = _worker_records(client)
    expected = {r.name: r.consuming for r in records}
    pinged = ping_round(app, expected, timeout=timeout)
    by_queue = workers_by_queue(pinged.pings)
    depths = queue_depths(client)
    report["queues"] = {
        q: {
            **d.to_dict(),
            "workers": by_queue.get(q, []),
            "late": [w for w in pinged.late if q in expected[w]],
        }
        for q, d in depths.items()
    }
    report["workers"] = [p.to_dict() for p in pinged.pings]
    # a worker whose presence record is fresh but whose ping came after the stragglers' window
    report["late"] = [{"worker": w, "queues": list(expected[w])} for w in pinged.late]
    report["ping_waited_ms"] = round(pinged.waited_ms, 1)
    holder, ttl = leader(client)
    report["beat"] = {"alive": holder is not None, "leader": holder, "lease_left_s": round(ttl, 1)}
    report.update(_fleet_status(client, holder, report["queues"], records))
    from ..infra.config import read_stack_file
    from .monitor import metrics_status  # issue 14: the monitor, rates and runtimes

    stack = read_stack_file(settings.home) or {}
    report["heartbeat"] = _last_heartbeat(client)
    _date_heartbeat(
        report["heartbeat"], stack.get("started_at"), settings.monitoring.health_check_interval
    )
    report["monitor"] = stack.get("monitor_url")
    report["metrics"] = metrics_status(client)
    report["scaling"] = _scaling_status(client)
    from .alerts import alerts_status  # issue 15: firing alerts by severity

    report["alerts"] = alerts_status()
    return report


def _scaling_status(client: Any) -> dict[str, Any] | None:
    """The `lewis up` supervisor's worker pools (issue 16): who runs, who drains, what is wanted."""
    from ..infra.actuators import read_local

    try:
        local = read_local(client)
    except Exception:  # the broker answered a moment ago; a lost report costs no status
        return None
    return (local or {}).get("queues")


def _worker_records(client: Any) -> list[Any]:
    from ..infra.fleet import read_workers

    try:
        return read_workers(client)
    except Exception:  # the broker answered a moment ago; without records every reply counts
        return []


def _fleet_status(
    client: Any, holder: str | None, queues: dict[str, dict[str, Any]], records: list[Any]
) -> dict[str, Any]:
    """Standby beats, draining workers (presence records) and what makes status exit 1."""
    from ..domain.fleet import DRAINING, BeatView
    from ..infra.fleet import read_beat

    try:
        view = read_beat(client)
    except Exception:  # the broker answered a moment ago; a lost record list costs no status
        view = BeatView(holder, ())
    draining = [w.name for w in records if w.state == DRAINING]
    # a late worker (fresh presence record, ping after the window) is marked, not missing
    problems = [
        f"queue {q}: no worker"
        for q, row in queues.items()
        if not row["workers"] and not row.get("late")
    ]
    if not view.leading:
        problems.append(f"beat: {view.describe}")
    return {
        "standby_beats": list(view.standbys),
        "beat_state": view.describe,
        "beat_leading": view.leading,
        "draining": draining,
        "problems": problems,
    }


def _last_heartbeat(client: Any) -> dict[str, Any] | None:
    """The heartbeat job's summary from Redis; from its database rows when Redis has none."""
    from ..infra.fleet import read_heartbeat

    try:
        summary = read_heartbeat(client)
    except Exception:
        summary = None
    if summary is not None:
        return summary
    try:
        from ..infra.database import get_engine
        from ..storage import heartbeats
        from ..storage.db import session_scope

        with session_scope(get_engine()) as session:
            rows = heartbeats.latest_heartbeats(session)
            if not rows:
                return None
            last_slot = max(r.slot for r in rows)
            current = [r for r in rows if r.slot == last_slot]
            rtts = [r.rtt_ms for r in current if r.rtt_ms is not None]
            return {
                "slot": last_slot,
                "recorded_at": max(r.recorded_at for r in current).timestamp(),
                "workers": len(current),
                "rtt_ms_max": max(rtts) if rtts else None,
            }
    except Exception as exc:  # status must print even if the database is unreachable
        return {"error": _short(exc)}


def _date_heartbeat(hb: dict[str, Any] | None, started: Any, period: float) -> None:
    """Mark a heartbeat older than this stack (``started``: a previous `lewis up` wrote it
    into the same database) or older than two heartbeat periods: neither is current."""
    if not hb or "error" in hb:
        return
    if isinstance(started, (int, float)) and hb["recorded_at"] < started:
        hb["previous_stack"] = True
    hb["stale"] = time.time() - hb["recorded_at"] > 2 * period


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def format_status(report: dict[str, Any]) -> str:
    b = report["broker"]
    if not b["up"]:
        return f"broker   {b['url']}  DOWN ({b.get('error', 'no answer')})"
    lines = [
        f"broker   {b['url']}  up ({b['ping_ms']} ms)",
        "",
        f"{'queue':<9}{'ready':>7}{'unacked':>9}  workers",
    ]
    for q, row in report["queues"].items():
        late = [
            f"{w} (late: no ping within {report.get('ping_waited_ms', 0):.0f} ms)"
            for w in row.get("late") or ()
        ]
        names = ", ".join([*row["workers"], *late]) or "none online"
        lines.append(f"{q:<9}{row['ready']:>7}{row['unacked']:>9}  {len(row['workers'])}  {names}")
    if report.get("draining"):
        lines.append(
            f"draining {', '.join(report['draining'])} (finishing their tasks, then exiting)"
        )
    beat = report["beat"]
    lines.append("")
    if beat["alive"] and report.get("beat_leading", True):
        lines.append(
            f"beat     alive, leader {beat['leader']} (lease {beat['lease_left_s']}s left)"
        )
    else:  # no lease: a standby takes it within one poll, or no beat runs at all
        lines.append(f"beat     {report.get('beat_state', 'NOT RUNNING')}")
    if beat["alive"] and report.get("beat_leading", True) and report.get("standby_beats"):
        lines.append(f"standby  {', '.join(report['standby_beats'])}")
    for q, pool in (report.get("scaling") or {}).items():
        wanted = "" if pool.get("desired") is None else f", wanted {pool['desired']}"
        lines.append(
            f"scaling  {q}: {', '.join(pool['running']) or 'none'}{wanted}"
            + (f"; draining {', '.join(pool['draining'])}" if pool["draining"] else "")
            + (f"; FAILED: {pool['error']}" if pool.get("error") else "")
        )
    hb = report.get("heartbeat")
    if not hb:
        lines.append("heartbeat none recorded yet")
    elif "error" in hb:
        lines.append(f"heartbeat unavailable ({hb['error']})")
    elif hb.get("previous_stack"):
        ago = time.time() - hb["recorded_at"]
        lines.append(
            f"heartbeat none since this stack started (the last, {ago:.0f}s ago, was "
            "a previous stack's)"
        )
    else:
        ago = time.time() - hb["recorded_at"]
        lines.append(
            f"heartbeat {'STALE: last ' if hb.get('stale') else ''}{ago:.0f}s ago: "
            f"{hb['workers']} workers answered"
            + (f", rtt max {hb['rtt_ms_max']:.1f} ms" if hb.get("rtt_ms_max") else "")
        )
    from .alerts import format_alerts_status
    from .monitor import format_metrics_status

    lines += ["", *format_metrics_status(report), *format_alerts_status(report)]
    return "\n".join(lines)


@cli.command("config")
def show_config() -> None:
    """Print the effective settings as JSON (secrets masked)."""
    from ..infra.config import get_settings

    click.echo(json.dumps(get_settings().redacted(), indent=2))
