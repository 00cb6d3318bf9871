"""The experiments by name, full and shortened (the tests run the short forms), and the
order they run in: one cluster serves consecutive experiments until a broker fault (which
may leave its workers dead) ends it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .ledger import Figures

Runner = Callable[[Any], "Figures | list[Figures]"]

NAMES = (
    "io_kill",
    "host_kill",
    "cpu_kill",
    "poison",
    "beats2",
    "beats3",
    "redis_pause",
    "redis_kill",
    "redis_kill_embedded",
)


def experiments(short: bool) -> dict[str, Runner]:
    """Each experiment on a :class:`~bench.chaos.experiments.Cluster`."""
    from .experiments import cpu_child_kill, host_kill, io_worker_kill, redis_kill, redis_pause
    from .leaders import beat_failover, poison_task

    patience = 20.0 if short else 60.0
    before, after = (1.5, 2.0) if short else (4.0, 6.0)  # load before and after a broker fault
    return {
        "io_kill": lambda c: io_worker_kill(
            c, kills=1 if short else 8, every=3.0 if short else 4.0, slack=8.0 if short else 30.0
        ),
        # a second host (two io workers of another working directory) killed whole, mid-scan
        "host_kill": lambda c: host_kill(c, rounds=1 if short else 3, slack=8.0 if short else 30.0),
        "cpu_kill": lambda c: cpu_child_kill(c, kills=2 if short else 8, every=3.0),
        "poison": lambda c: poison_task(c, neighbours=6 if short else 20),
        "beats2": lambda c: beat_failover(
            c, beats=2, kills=1 if short else 3, between=1.0 if short else 5.0
        ),
        "beats3": lambda c: beat_failover(
            c, beats=3, kills=1 if short else 3, between=1.0 if short else 5.0
        ),
        # longer than every client timeout: the app's Redis clients (5 s), kombu's (30 s)
        "redis_pause": lambda c: redis_pause(
            c, paused=6.0 if short else 35.0, before=before, after=after, patience=patience
        ),
        "redis_kill": lambda c: redis_kill(
            c, down=2.0 if short else 5.0, before=before, after=after, patience=patience
        ),
    }


def run_embedded(short: bool) -> Figures:
    from .leaders import embedded_redis_kill

    return embedded_redis_kill(
        # short: the suite's run; on 2 busy cores the workers' reconnect (kombu's backoff) took
        # past 20 s once in four parallel runs, so the patience is the full run's less a third
        down_patience=45.0 if short else 60.0,
        before=1.5 if short else 4.0,
        after=2.0 if short else 6.0,
    )


def run_experiments(
    names: list[str], short: bool, on_result: Callable[[Figures], None] = lambda f: None
) -> list[Figures]:
    """Run ``names`` in order; a broker experiment is the last on its cluster."""
    from .experiments import cluster

    table = experiments(short)
    out: list[Figures] = []

    def record(name: str, result: Figures | list[Figures]) -> None:
        for figures in result if isinstance(result, list) else [result]:
            figures.key = name
            on_result(figures)
            out.append(figures)

    pending = list(names)
    while pending:
        if pending[0] == "redis_kill_embedded":
            record(pending.pop(0), run_embedded(short))
            continue
        with cluster() as c:
            while pending and pending[0] in table:
                name = pending.pop(0)
                record(name, table[name](c))
                if name.startswith("redis_"):
                    break
    return out
