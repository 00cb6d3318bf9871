"""The one progress loop of the CLI: wait on any job's handle, with a live line meanwhile.

``lewis scan``, ``lewis http`` and ``lewis loadtest`` each hand :func:`follow` their handle
(:class:`~lewis_tasks.producer.handle.JobHandle`) and how to draw its progress; the result
comes by push, the line is redrawn every :data:`TICK` when stdout is a terminal, Ctrl-C cancels
the job (a second one leaves it running), and a wait that runs out raises WaitTimeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

from . import cancel_on_interrupt

if TYPE_CHECKING:
    from ..producer.handle import JobHandle

TICK = 0.25  # seconds between redraws of the progress line
P = TypeVar("P")
R = TypeVar("R")


def follow(
    handle: JobHandle[P, R],
    timeout: float | None,
    line: Callable[[P], str] | None = None,
    *,
    keep_line: bool = False,
    on_interrupt: Callable[[], R] | None = None,
) -> R:
    """The job's result once it is done. With ``line`` (stdout is a terminal) its progress is
    drawn on one line meanwhile, wiped at the end (``keep_line``: left on screen), under a
    line naming the job (what ``lewis … cancel`` takes from another shell). The first
    Ctrl-C cancels a job that can be cancelled and exits 130, or returns ``on_interrupt()``
    when given (say, the partial result of a cancelled load test); WaitTimeout after
    ``timeout`` seconds."""
    if line is not None and handle.cancellable:  # its id, for `lewis … cancel ID` elsewhere
        click.echo(f"{handle.what} {handle.id} (Ctrl-C cancels it)")
    try:
        return _wait_drawing(handle, timeout, line, keep_line)
    except KeyboardInterrupt:
        if on_interrupt is not None:
            return on_interrupt()
        if not handle.cancellable:
            raise
        cancel_on_interrupt(f"{handle.what} {handle.id}", handle.cancel)


def _wait_drawing(
    handle: JobHandle[P, R], timeout: float | None, line: Callable[[P], str] | None, keep_line: bool
) -> R:
    from ..producer.handle import WaitTimeout  # Celery: only once a command waits

    deadline = None if timeout is None else time.monotonic() + timeout
    width = 0
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise handle.timed_out(timeout)
            step = left if line is None or (left is not None and left < TICK) else TICK
            try:
                return handle.wait(timeout=step)
            except WaitTimeout:
                if line is None:
                    raise handle.timed_out(timeout) from None
            text = line(handle.progress())
            click.echo("\r" + text.ljust(width), nl=False)
            width = len(text)
    finally:
        if width:
            click.echo("" if keep_line else "\r" + " " * width + "\r", nl=keep_line)


__all__ = ["follow", "TICK"]
