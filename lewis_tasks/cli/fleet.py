"""``lewis health`` (probes) and ``lewis drain`` (deploys, scale-down): the fleet as a whole.

``lewis health`` reads the presence records workers and beats keep on the broker
(infra/fleet.py) with one short-deadline Redis client and no Celery import, so it answers
well within a probe's second: exit 0 healthy, 1 degraded, 2 down — Docker's and Kubernetes'
probe conventions (both treat any non-zero as failing; 1 vs 2 is for people and scripts).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from ..infra.routing import QUEUES
from . import SECONDS, Exit, cli


@cli.command()
@click.option(
    "--queue",
    type=click.Choice(QUEUES),
    default=None,
    help="Only this queue: is any worker taking new work from it?",
)
@click.option(
    "--worker",
    "worker_name",
    default=None,
    metavar="NAME",
    help="Only this worker: a node name (io-1a2b3c@host) or a host (all nodes on it), "
    'e.g. --worker "$(hostname)" in a container.',
)
@click.option("--beat", is_flag=True, help="Only the beat: does one lead?")
@click.option(
    "--timeout",
    type=SECONDS,
    default=0.6,
    show_default=True,
    help="Seconds to wait for the broker (start-up takes ~0.25 s more).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def health(
    queue: str | None, worker_name: str | None, beat: bool, timeout: float, as_json: bool
) -> None:
    """Exit 0 healthy, 1 degraded, 2 down: for liveness/readiness probes and healthchecks.

    Without options, the whole cluster: down if the broker does not answer or no worker
    consumes anything; degraded if a queue has no worker, a worker drains or no beat leads.
    """
    from ..domain.fleet import (
        Health,
        Verdict,
        beat_health,
        cluster_health,
        queue_health,
        worker_health,
    )

    verdicts: list[Verdict]
    try:
        workers, beat_view = _read_fleet(timeout)
    except _Down as exc:
        verdicts = [Verdict(Health.DOWN, (str(exc),))]
    else:
        verdicts = []
        if queue:
            verdicts.append(queue_health(workers, queue))
        if worker_name:
            verdicts.append(worker_health(workers, worker_name))
        if beat:
            verdicts.append(beat_health(beat_view))
        if not verdicts:
            verdicts.append(cluster_health(workers, beat_view, QUEUES))
    worst = max(v.health for v in verdicts)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "health": worst.name.lower(),
                    "code": int(worst),
                    "reasons": [r for v in verdicts for r in v.reasons],
                }
            )
        )
    else:
        word = {Health.HEALTHY: "healthy", Health.DEGRADED: "degraded", Health.DOWN: "down"}
        reasons = [r for v in verdicts for r in v.reasons]
        click.echo(word[worst] + (": " + "; ".join(reasons) if reasons else ""))
    sys.exit(int(worst))


class _Down(Exception):
    pass


def require_workers(queue: str, *, wait: bool) -> None:
    """Refuse at once (exit 3) when no worker takes new work from ``queue``; with ``wait``,
    say so on stderr and go on (the work waits in the queue for one).

    Presence records answer first (one Redis round trip); without any, a broker ping with
    ``monitoring.ping_timeout`` settles it (workers of a version without records).
    """
    from ..errors import BrokerUnavailable
    from ..infra.config import get_settings

    settings = get_settings()
    if not settings.broker.url:
        return  # the submit itself says there is no broker
    try:
        workers, _ = _read_fleet(settings.monitoring.ping_timeout)
    except _Down:
        return  # the submit's own broker check reports it
    consumers = [w for w in workers if queue in w.consuming]
    if consumers:
        _require_same_database(consumers, settings.database.url)
        return
    if not workers and _answers_ping(queue):  # no records at all: workers of an older version
        return
    message = f"no {queue} worker is online (`lewis status`; start one with `lewis worker {queue}`)"
    if wait:
        click.echo(f"lewis: {message}; submitting anyway, the work waits in the queue", err=True)
        return
    raise BrokerUnavailable(
        f"{message}; nothing was submitted (--wait-for-workers submits and waits for one)"
    )


def _require_same_database(consumers: list[Any], url: str) -> None:
    """ConfigError (exit 2, nothing submitted) when a worker that would take this job writes
    to another database than this command reads its result from."""
    from ..domain.fleet import other_databases
    from ..errors import ConfigError
    from ..infra.fleet import database_fingerprint, database_mismatch

    others = other_databases(consumers, database_fingerprint(url))
    if others:
        raise ConfigError(database_mismatch(others) + "; nothing was submitted")


def _answers_ping(queue: str) -> bool:
    from ..infra.broker import ping_workers
    from ..infra.celery_app import app
    from ..infra.config import get_settings

    pings = ping_workers(app, timeout=get_settings().monitoring.ping_timeout)
    return any(queue in p.queues for p in pings)


def _read_fleet(timeout: float) -> tuple[list[Any], Any]:
    from ..errors import BrokerUnavailable
    from ..infra.config import get_settings
    from ..infra.fleet import probe_fleet

    url = get_settings().broker.url
    if not url:
        raise _Down("no broker: LEWIS_BROKER_URL is not set and no stack runs here")
    try:
        return probe_fleet(url, timeout)
    except BrokerUnavailable as exc:
        raise _Down(str(exc)) from None


@cli.command()
@click.option(
    "--queue",
    "queues",
    type=click.Choice(QUEUES),
    multiple=True,
    help="Stop consuming only this queue (repeatable); a worker left with no queue "
    "exits once idle.",
)
@click.option(
    "--worker",
    "worker_name",
    default=None,
    metavar="NAME",
    help="Only this worker: a node name or a host (all nodes on it).",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the drained workers have exited.",
)
@click.option(
    "--timeout", type=SECONDS, default=600.0, show_default=True, help="Seconds to wait for them."
)
def drain(queues: tuple[str, ...], worker_name: str | None, wait: bool, timeout: float) -> None:
    """Stop taking new work, let running tasks finish, exit warm (deploys, scale-down).

    Queued tasks stay queued for the workers that remain (or the next deploy's).
    """
    from ..domain.fleet import WorkerRecord
    from ..errors import LewisError
    from ..infra.broker import broadcast
    from ..infra.celery_app import app
    from ..infra.fleet import read_workers
    from ..infra.redis_client import get_redis

    client = get_redis()
    fleet = read_workers(client)
    chosen: list[WorkerRecord] = [w for w in fleet if worker_name is None or w.matches(worker_name)]
    if queues:
        chosen = [w for w in chosen if set(queues) & set(w.queues)]
    if not chosen:
        raise LewisError(
            f"no worker matches{' ' + worker_name if worker_name else ''}"
            f"{' on ' + ', '.join(queues) if queues else ''} (`lewis status` lists them)"
        )
    names = [w.name for w in chosen]
    replies = broadcast(
        app,
        "lewis_drain",
        timeout=2.0,
        destination=names,
        limit=len(names),
        arguments={"queues": list(queues)},
    )
    exiting = []
    for name in names:
        reply = replies.get(name)
        if reply is None:
            click.echo(f"{name}: no answer (already gone, or not a LEWIS worker of this version)")
            continue
        click.echo(
            f"{name}: {reply.get('ok', reply)}"
            + (
                "; exits when idle"
                if reply.get("exiting")
                else f"; still consuming {', '.join(reply.get('consuming') or [])}"
            )
        )
        if reply.get("exiting"):
            exiting.append(name)
    if not wait or not exiting:
        return
    deadline = time.monotonic() + timeout
    while True:
        left = {w.name for w in read_workers(client)} & set(exiting)
        if not left:
            click.echo(f"drained: {len(exiting)} worker(s) exited")
            return
        if time.monotonic() >= deadline:
            click.echo(f"still running after {timeout:g}s: {', '.join(sorted(left))}", err=True)
            sys.exit(int(Exit.FAILURE))
        time.sleep(0.5)
