"""The periodic jobs, as data: name → task, interval (from settings) and queue.

Also the beat's entry: ``python -m beat_schedule [celery beat options]`` (what ``lewis beat``
execs) hands these jobs to the Celery app (``beat_schedule`` option) and runs ``celery beat``;
the one leading beat (``lewis_tasks.infra.beat.LeaderScheduler``) fires them. Infra never
imports this module: the jobs are handed in. Each job fires at the start of its wall-clock
slot and receives ``slot=<int>`` so a run is keyed by the interval it belongs to.
Later jobs (metrics, alerts, scaling) are added here, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lewis_tasks.infra.config import Settings


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    task: str
    seconds: float
    queue: str = "control"


def jobs(settings: Settings) -> list[PeriodicJob]:
    out = [
        # Ping every worker through the broker; record liveness and round trip.
        PeriodicJob(
            "heartbeat", "lewis.control.heartbeat", settings.monitoring.health_check_interval
        ),
        # Drop heartbeats older than the retention, and other expired bookkeeping.
        PeriodicJob("cleanup", "lewis.control.cleanup", float(settings.memory.cleanup_interval)),
        # Queue depths, workers online, the workers' metric reports rolled up (issue 14).
        PeriodicJob(
            "metrics", "lewis.control.collect_metrics", float(settings.monitoring.metrics_interval)
        ),
        # Alert rules advanced one slot; notifications go out in their own task (issue 15).
        PeriodicJob(
            "alerts", "lewis.control.evaluate_alerts", float(settings.alerts.evaluation_interval)
        ),
    ]
    if settings.scaling.enabled:
        # Per queue: workers wanted from the collected load, recorded and actuated (issue 16).
        out.append(
            PeriodicJob("scaling", "lewis.control.decide_scaling", settings.scaling.interval)
        )
    return out


def periodic_jobs(settings: Settings) -> dict[str, dict[str, Any]]:
    """The jobs in Celery's ``beat_schedule`` form."""
    from lewis_tasks.infra.beat import every

    return {
        job.name: {
            "task": job.task,
            "schedule": every(job.seconds),
            # A job older than its own interval is stale: the next slot will run it afresh.
            "options": {"queue": job.queue, "expires": job.seconds},
        }
        for job in jobs(settings)
    }


def main(argv: list[str]) -> int:
    """Run ``celery beat`` (options in ``argv``) over :func:`periodic_jobs`; its exit code."""
    import click

    from lewis_tasks.infra.celery_app import app
    from lewis_tasks.infra.config import get_settings

    app.conf.beat_schedule = periodic_jobs(get_settings())
    try:
        return int(app.start(["beat", *argv]) or 0)
    except click.ClickException as exc:  # a bad option: one line and exit 2, as `celery beat`
        exc.show()
        return exc.exit_code


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
