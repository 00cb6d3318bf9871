"""Submitting work: handles, single submits and a pipelined batch submit.

Both push Celery protocol-2 messages straight to the broker (:mod:`lewis_tasks.infra.messages`)
with ONE Redis command: ``send_task`` spends three round trips and ~1 ms of Python per task
(binding lookup, publish, result subscription in series); here ``submit`` writes the result's
SUBSCRIBE and the LPUSH in one write on its thread's result connection, and waits on that
connection (:mod:`lewis_tasks.infra.result_listener`); ``submit_many`` pipelines one LPUSH per
500 messages. The queue comes from the routing table. Canvas (chords, groups) still
goes through Celery's own publish.

:func:`send_one` sends without a Celery app at all (nor an import of Celery): the one-task jobs
of the CLI (a one-chunk scan, a one-chunk HTTP batch) send with it and wait on their result with
:mod:`~lewis_tasks.infra.result_listener`; the app is built only when something needs it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BrokerUnavailable, InvalidInput, LewisError
from ..infra.config import get_settings, redact_url
from ..infra.messages import message_origin, push_messages, queue_key, sending, task_message
from ..infra.redis_client import first_line, unreachable_errors
from ..infra.reporter import note_sent
from ..infra.result_listener import ResultListener, listener
from ..infra.routing import IO, MAX_PACK, PACKABLE, PACKED_TASK, queue_for

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

FALLBACK_POLL = 1.0  # seconds: a result whose push was lost is still seen this soon


def await_result(
    result: AsyncResult,
    timeout: float | None,
    *,
    interval: float = FALLBACK_POLL,
    propagate: bool = True,
) -> Any:
    """``result``'s value as soon as the worker stores it: the Redis result backend PUBLISHes
    every state it stores and ``get`` listens on that channel (a push, no polling). A push can
    be lost (a reconnect between SUBSCRIBE and PUBLISH): each ``get`` re-reads the stored state
    first, so waiting in slices of ``interval`` bounds what a lost push costs. Celery's
    TimeoutError once ``timeout`` has passed."""
    from celery.exceptions import TimeoutError as ResultTimeout

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = interval if deadline is None else min(interval, deadline - time.monotonic())
        try:
            return result.get(timeout=max(0.0, step), propagate=propagate)
        except ResultTimeout:
            if deadline is not None and time.monotonic() >= deadline:
                raise


@dataclass
class TaskHandle:
    """A submitted task: poll its state, wait for its result."""

    id: str
    name: str
    app: Celery

    @property
    def async_result(self) -> AsyncResult:
        from celery.result import AsyncResult

        return AsyncResult(self.id, app=self.app)

    @property
    def state(self) -> str:
        return str(self.async_result.state)

    def ready(self) -> bool:
        return bool(self.async_result.ready())

    def wait(self, timeout: float | None = None, interval: float = FALLBACK_POLL) -> Any:
        """The task's return value, by push; re-raises its failure (a LewisError subclass
        where it was one); Celery's TimeoutError after ``timeout`` seconds. ``interval``: the
        longest a lost push can delay it."""
        from celery.exceptions import TimeoutError as ResultTimeout
        from celery.result import assert_will_not_block

        assert_will_not_block()  # as Celery's get: a task waiting on a task can deadlock
        app = _app(self.app)
        meta = results_listener(app).wait(self.id, timeout, interval)
        if meta is None:
            raise ResultTimeout("The operation timed out.")
        if meta["status"] == "SUCCESS":
            return meta.get("result")
        error = app.backend.exception_to_python(meta.get("result"))
        if isinstance(error, BaseException):
            raise error
        raise LewisError(f"task {self.id} ended {meta['status']}")  # stored without its error

    def forget(self) -> None:
        self.async_result.forget()


def _app(app: Celery | None) -> Celery:
    if app is not None:
        return app
    from ..infra.celery_app import get_app

    return get_app()


def _require_broker(app: Celery) -> None:
    broker_url(app)


def broker_url(app: Celery | None = None) -> str:
    """The broker of ``app`` (default: the settings'); LewisError if there is none."""
    url = str(app.conf.broker_url or "") if app is not None else get_settings().broker.url
    if not url:
        raise LewisError(
            "no broker: set LEWIS_BROKER_URL, or start the embedded stack with "
            "`lewis up` (other commands then find it by themselves)"
        )
    return url


def result_url(app: Celery | None = None, broker: str | None = None) -> str:
    """The Redis that stores ``app``'s task results (default: the settings'); ``broker``:
    ``app``'s broker URL, if the caller has it."""
    if app is None:
        return get_settings().result_backend
    url = str(app.conf.result_backend or "") or broker or broker_url(app)
    scheme = url.split("://", 1)[0]
    return url.split("+", 1)[1] if "+" in scheme else url  # result_backend.backend_url's form


@contextlib.contextmanager
def publishing(app: Celery | str) -> Iterator[None]:
    """Turn a broker that cannot be reached while publishing into one readable BrokerUnavailable
    (``app``: the Celery app, or the broker's URL).

    For every way of sending (our pushes, Celery's ``send_task``, chords): redis-py, kombu and
    the socket layer each raise their own connection errors.
    """
    try:
        yield
    except BrokerUnavailable:
        raise
    except Exception as exc:
        if not isinstance(exc, unreachable_errors()):
            raise
        url = app if isinstance(app, str) else str(app.conf.broker_url)
        raise BrokerUnavailable(
            f"broker {redact_url(url)} is unreachable: {first_line(exc)}"
        ) from exc


def send_one(
    url: str,
    name: str,
    task_id: str,
    args: Sequence[Any],
    *,
    errbacks: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Send task ``name`` (to its queue, from the routing table) to the broker at ``url`` with
    ``errbacks`` linked, without building a Celery app; BrokerUnavailable if it is not taken."""
    queue = queue_for(name)
    message = task_message(name, task_id, args, {}, queue, message_origin(), 0, errbacks=errbacks)
    with publishing(url):
        push_messages(url, queue_key(queue, 0), [message])
    note_sent(name, queue)


def submit(
    name: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    app: Celery | None = None,
    **options: Any,
) -> TaskHandle:
    """Send task ``name`` to its queue (from the routing table) and return its handle."""
    app = _app(app)
    broker = broker_url(app)
    queue = options.pop("queue", None) or queue_for(name)
    priority = int(options.pop("priority", 0) or 0)
    with publishing(app):
        if options:  # eta, countdown, expires, link…: Celery's publish knows them all
            result = app.send_task(
                name,
                args=list(args),
                kwargs=dict(kwargs or {}),
                queue=queue,
                priority=priority,
                **options,
            )
            return TaskHandle(result.id, name, app)
        task_id = str(uuid.uuid4())
        message = task_message(name, task_id, args, kwargs or {}, queue, message_origin(), priority)
        key = queue_key(queue, priority)
        results = results_listener(app, broker)
        if results.pushes:  # results on the broker's server: subscribed and pushed in one write
            sending(broker, lambda: results.push(key, message, task_id))
        else:  # the wait subscribes and reads
            push_messages(broker, key, [message])
    note_sent(name, queue)
    return TaskHandle(task_id, name, app)


def submit_many(
    name: str,
    calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
    *,
    app: Celery | None = None,
    queue: str | None = None,
    batch: int = 1000,
    priority: int = 0,
    pack: int | None = None,
) -> list[TaskHandle]:
    """Enqueue one task per ``(args, kwargs)`` in ``calls``, pipelined ``batch`` messages at a time.

    ``pack > 1`` (packable io tasks only, see tasks/iobatch.py) puts up to ``pack`` calls in
    one message; each call keeps its own id, handle, result and retries. ``None`` (the default)
    packs a packable task by its measured runtime (:func:`default_pack`), anything else one
    call to a message; ``pack=1`` never packs.
    """
    app = _app(app)
    _require_broker(app)
    queue = queue or queue_for(name)
    if pack is None:
        pack = default_pack(name, queue, str(app.conf.broker_url))
    if batch < 1 or not 1 <= pack <= MAX_PACK:
        raise InvalidInput(
            f"batch must be ≥ 1 and pack within 1..{MAX_PACK}, got batch={batch}, pack={pack}"
        )
    key = queue_key(queue, priority)
    origin = message_origin()
    handles: list[TaskHandle] = []
    pending: list[str] = []
    packed: list[list[Any]] = []

    def flush_pack() -> None:
        pending.append(
            task_message(
                PACKED_TASK, str(uuid.uuid4()), [name, packed[:]], {}, queue, origin, priority
            )
        )
        packed.clear()

    with publishing(app):
        for args, kwargs in calls:
            task_id = str(uuid.uuid4())
            handles.append(TaskHandle(task_id, name, app))
            if pack > 1:
                packed.append([task_id, list(args), dict(kwargs)])
                if len(packed) >= pack:
                    flush_pack()
            else:
                pending.append(task_message(name, task_id, args, kwargs, queue, origin, priority))
            if len(pending) >= batch:
                push_messages(str(app.conf.broker_url), key, pending)
                pending = []
        if packed:
            flush_pack()
        if pending:
            push_messages(str(app.conf.broker_url), key, pending)
    note_sent(PACKED_TASK if pack > 1 else name, queue, -(-len(handles) // pack))
    return handles


def default_pack(name: str, queue: str, broker_url: str | None = None) -> int:
    """Calls per message for ``submit_many(name, …)``: a packable io task's measured runtime
    (p95 over the last 5 minutes of the workers' reports on ``broker_url``) sized by
    domain/packing.py, so a message holds at most ~50 ms of work; 1 for every other task, or
    one never measured."""
    if name not in PACKABLE or queue != IO:
        return 1
    from ..domain.packing import pack_size
    from ..infra.metrics_store import recent_runtime_p95

    p95 = recent_runtime_p95(name, broker_url=broker_url)
    return pack_size(p95, get_settings().broker.visibility_timeout)


def results_listener(app: Celery | None, broker: str | None = None) -> ResultListener:
    """This thread's result listener for ``app``'s results and broker (``None``: the
    settings' results); ``broker``: the broker's URL, when the caller has read it already."""
    if app is not None:
        broker = broker or str(app.conf.broker_url or "") or None
    return listener(result_url(app, broker), broker, get_settings().broker.connect_timeout)


def wait_all(handles: Sequence[TaskHandle], timeout: float | None = None) -> list[Any]:
    """Every handle's result, in order; raises the first failure."""
    deadline = None if timeout is None else time.monotonic() + timeout
    out = []
    for handle in handles:
        left = None if deadline is None else max(0.01, deadline - time.monotonic())
        out.append(handle.wait(left))
    return out
