"""``lewis monitor`` (Prometheus /metrics + live dashboard) and ``lewis metrics`` (stats)."""

from __future__ import annotations

import json
import time

import click

from ..errors import ConfigError, InvalidInput
from . import cli


@cli.command()
@click.option(
    "--port",
    type=int,
    default=None,
    help="Port (default: monitoring.monitor_port; 0 picks a free one).",
)
@click.option(
    "--address",
    default=None,
    help="Address to bind (default: monitoring.monitor_address, 127.0.0.1).",
)
def monitor(port: int | None, address: str | None) -> None:
    """Serve /metrics (Prometheus), a live dashboard at / and its WebSocket, from Redis."""
    import asyncio  # here, not at the top: every other command (and --help) goes without it

    from ..infra.config import get_settings
    from ..infra.metrics_store import store_from_settings
    from ..monitor.server import serve
    from ..monitor.view import MonitorView

    settings = get_settings()
    if not settings.broker.url:
        raise ConfigError("no broker: set LEWIS_BROKER_URL, or start the stack with `lewis up`")
    host = address or settings.monitoring.monitor_address
    chosen = settings.monitoring.monitor_port if port is None else port
    view = MonitorView(store_from_settings())

    def ready(bound: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"monitor http://{shown}:{bound}", nl=True)

    try:
        asyncio.run(serve(view, host, chosen, on_ready=ready))
    except OSError as exc:
        raise ConfigError(
            f"setting monitoring.monitor_port: cannot listen on {host}:{chosen} ({exc.strerror})"
        ) from None
    except KeyboardInterrupt:
        pass


@cli.command()
@click.argument("name", required=False)
@click.option("--window", default="5m", show_default=True, help="How far back: 90s, 5m, 1h.")
@click.option("--label", "labels", multiple=True, help="Only series with KEY=VALUE (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def metrics(name: str | None, window: str, labels: tuple[str, ...], as_json: bool) -> None:
    """List the metric names, or NAME's count/sum/min/max/avg/p50/p95/p99 over --window."""
    from ..domain.metrics import parse_window
    from ..infra.metrics_store import store_from_settings

    parse_window(window)
    wanted = {}
    for pair in labels:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--label {pair!r}: expected KEY=VALUE")
        wanted[key] = value
    store = store_from_settings()
    if name is None:
        kinds = store.kinds()
        if as_json:
            click.echo(json.dumps(kinds, indent=2, sort_keys=True))
        else:
            for metric, kind in sorted(kinds.items()):
                click.echo(f"{metric:<44} {kind}")
        return
    stats = store.stats(name, window, wanted or None, now=time.time())
    if as_json:
        click.echo(json.dumps(stats.to_dict(), indent=2))
        return
    unit = "s" if stats.kind == "histogram" else ""
    click.echo(
        f"{stats.name} ({stats.kind}) over {window}: count {stats.count}, sum {stats.sum:.6g}{unit}"
    )
    click.echo(f"  min {stats.min:.6g}{unit}  avg {stats.avg:.6g}{unit}  max {stats.max:.6g}{unit}")
    click.echo(f"  p50 {stats.p50:.6g}{unit}  p95 {stats.p95:.6g}{unit}  p99 {stats.p99:.6g}{unit}")


def metrics_status(client: object) -> dict[str, object]:
    """The collector's last roll-up for `lewis status`: rates per queue, runtimes per task."""
    from ..infra.config import get_settings
    from ..infra.metrics_store import MetricStore

    m = get_settings().monitoring
    try:
        snap = MetricStore(
            client,  # type: ignore[arg-type]
            m.metrics_interval,
            m.retention,
            m.max_label_sets,
        ).snapshot()
    except Exception as exc:  # status prints even if the store is unreadable
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    if not snap:
        return {}
    return {
        "collected_at": snap.get("ts"),
        "rates": {
            q: {"done_per_s": r.get("done_per_s", 0.0), "failed_per_s": r.get("failed_per_s", 0.0)}
            for q, r in snap.get("queues", {}).items()
        },
        "tasks": snap.get("tasks", {}),
    }


def format_metrics_status(report: dict[str, object]) -> list[str]:
    """Lines for `lewis status`: the monitor's URL, per-queue rates, per-task runtimes."""
    lines = [f"monitor  {report.get('monitor') or 'not running'}"]
    metrics = report.get("metrics") or {}
    assert isinstance(metrics, dict)
    if "error" in metrics:
        return [*lines, f"metrics  unavailable ({metrics['error']})"]
    if not metrics:
        return [*lines, "metrics  none collected yet (the beat's metrics job fills them)"]
    ago = time.time() - float(metrics.get("collected_at") or 0)
    lines.append(f"metrics  collected {ago:.0f}s ago; last minute:")
    lines.append(f"{'queue':<9}{'done/s':>9}{'failed/s':>10}")
    for queue, rate in sorted(metrics["rates"].items()):
        lines.append(f"{queue:<9}{rate['done_per_s']:>9.2f}{rate['failed_per_s']:>10.2f}")
    tasks = metrics.get("tasks") or {}
    if tasks:
        lines.append(f"{'task':<36}{'done':>7}{'failed':>8}{'p50 ms':>9}{'p95 ms':>9}")
        for name, t in sorted(tasks.items()):
            p50, p95 = t.get("runtime_p50"), t.get("runtime_p95")
            lines.append(
                f"{name[:35]:<36}{t.get('succeeded', 0):>7}{t.get('failed', 0):>8}"
                + (f"{p50 * 1000:>9.1f}{p95 * 1000:>9.1f}" if p50 is not None else "")
            )
    return lines
