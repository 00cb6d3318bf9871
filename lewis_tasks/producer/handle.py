"""One handle type for every job: ``JobHandle[Progress, Result]``.

A scan, an HTTP batch and a load test are each many tasks; the caller holds one handle:
``progress()`` (typed) while it runs, ``wait()`` for its typed result by push, ``result()`` for
what is stored now, ``cancel()``, and ``worst_case``, the longest the job may take (None: no
bound is known). Waiting past a timeout raises :class:`WaitTimeout`, and a failed part's own
error is re-raised (:func:`unwrap_failure`), the same for every job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from ..errors import LewisError, TransientError
from .base import FALLBACK_POLL, _app, results_listener

if TYPE_CHECKING:
    from celery import Celery

P = TypeVar("P")
R = TypeVar("R")


class WaitTimeout(TimeoutError):
    """The job is still running after the wait (it keeps running). The builtin TimeoutError
    (not Celery's: a handle waits without importing Celery where it can)."""


def unwrap_failure(app: Celery, exc: BaseException, part_ids: Iterable[str] = ()) -> BaseException:
    """The error to raise for a job that failed with ``exc``: a failed part's own error
    (InvalidInput, OutOfScope…) behind a ChordError, a TransientError for a part that expired
    unrun in the queue, else ``exc`` itself."""
    from celery.exceptions import ChordError
    from celery.result import AsyncResult

    from ..infra.task import chord_cause

    if isinstance(exc, ChordError):
        for part_id in part_ids:
            part = AsyncResult(part_id, app=app)
            if part.failed() and isinstance(part.result, BaseException):
                return part.result
            if part.state == "REVOKED":
                return TransientError(
                    f"part {part_id} never ran: it expired waiting in the "
                    "queue (io workers busy or absent)"
                )
    return chord_cause(app, exc)


class JobHandle(Generic[P, R]):
    """A submitted job of many tasks (subclasses are dataclasses with ``id`` and ``app``)."""

    id: str
    app: Celery | None  # None: built when first needed (a job sent without Celery's app)
    what: ClassVar[str] = "job"  # how messages name it: "scan", "HTTP batch", "load test"
    worst_case: float | None = None  # seconds it may take at worst, queueing included
    cancellable: ClassVar[bool] = True  # False: cancel() always says no (it ends by itself)

    def progress(self) -> P:
        """How far it has come, as stored so far."""
        raise NotImplementedError

    def wait(self, timeout: float | None = None, interval: float = FALLBACK_POLL) -> R:
        """Its result once it is done, by push (``interval``: the longest a lost push can
        delay it); WaitTimeout after ``timeout`` seconds; a failure re-raised unwrapped."""
        raise NotImplementedError

    def result(self) -> Any:
        """What it has stored now."""
        raise NotImplementedError

    def cancel(self) -> bool:
        """Stop it; False if it had ended already."""
        raise NotImplementedError

    def started(self) -> bool:
        """True once some part of it runs (or ran): a worker took it."""
        return True

    def celery_app(self) -> Celery:
        """The Celery app this job was sent with, built now if it was sent without one."""
        self.app = _app(self.app)
        return self.app

    def await_task(
        self,
        task_id: str,
        timeout: float | None,
        interval: float,
        parts: Iterable[str] | None = None,
    ) -> Any:
        """The return value of the job's last task (sent without Celery: its only task, or a
        chord's body), by push from the result store; WaitTimeout after ``timeout``; its
        failure re-raised as :func:`unwrap_failure` gives it (``parts``: the tasks whose own
        error to look for, default the task itself), a revoked task as "cancelled"."""
        meta = results_listener(self.app).wait(task_id, timeout, interval)
        if meta is None:
            raise self.timed_out(timeout)
        if meta["status"] == "SUCCESS":
            return meta.get("result")
        if meta["status"] == "REVOKED":
            raise LewisError(f"{self.what} {self.id} cancelled")
        app = self.celery_app()  # a failure: Celery turns the stored error back into one
        error = app.backend.exception_to_python(meta.get("result"))
        raise unwrap_failure(app, error, [task_id] if parts is None else parts)

    def timed_out(self, timeout: float | None) -> WaitTimeout:
        """The error for a wait of ``timeout`` seconds that ran out."""
        return WaitTimeout(f"{self.what} {self.id} still running after {timeout or 0:g} s")


__all__ = ["JobHandle", "WaitTimeout", "unwrap_failure"]
