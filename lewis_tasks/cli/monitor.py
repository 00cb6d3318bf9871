"""``lewis monitor`` (Prometheus /metrics + live dashboard) and ``lewis metrics`` (stats)."""

from __future__ import annotations

import asyncio
import json
import time

import click

from ..errors import ConfigError, InvalidInput
from . import cli


@cli.command()
@click.option("--port", type=int, default=None,
              help="Port (default: monitoring.monitor_port; 0 picks a free one).")
@click.option("--address", default=None,
              help="Address to bind (default: monitoring.monitor_address, 127.0.0.1).")
def monitor(port: int | None, address: str | None) -> None:
    """Serve /metrics (Prometheus), a live dashboard at / and its WebSocket, from Redis."""
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
        raise ConfigError(f"setting monitoring.monitor_port: cannot listen on {host}:{chosen} "
                          f"({exc.strerror})") from None
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
    click.echo(f"{stats.name} ({stats.kind}) over {window}: count {stats.count}, "
               f"sum {stats.sum:.6g}{unit}")
    click.echo(f"  min {stats.min:.6g}{unit}  avg {stats.avg:.6g}{unit}  max {stats.max:.6g}{unit}")
    click.echo(f"  p50 {stats.p50:.6g}{unit}  p95 {stats.p95:.6g}{unit}  p99 {stats.p99:.6g}{unit}")
