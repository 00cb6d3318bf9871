"""A task's result read straight from the Redis result backend, without Celery.

Celery's Redis backend stores a task's state under ``celery-task-meta-<id>`` and PUBLISHes it
on a channel of the same name (:mod:`lewis_tasks.infra.result_backend`);
:mod:`lewis_tasks.infra.result_listener` waits for it by push. The stored JSON is decoded here
as kombu writes it (its ``{"__type__": …}`` markers for datetimes and the like). Reading it
this way needs no Celery app: the CLI's one-task jobs (``lewis scan HOST -p 80``, ``lewis http
URL``) start without building or importing one. A failure is returned as the stored meta;
turning it back into the task's exception is Celery's work (:mod:`lewis_tasks.producer.handle`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from typing import Any

from .runtime import runtime

RESULT_KEY = "celery-task-meta-{task_id}"
# A chord's size, as Celery's Redis backend keeps it (``set_chord_size``): the header parts'
# on_chord_part_return compare their count with it to send the body.
CHORD_SIZE_KEY = "celery-taskset-meta-{group_id}.s"
READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})  # Celery's READY_STATES

_DECODERS: dict[str, Any] = {
    "datetime": dt.datetime.fromisoformat,
    "date": lambda v: dt.datetime.fromisoformat(v).date(),
    "time": dt.time.fromisoformat,
    "decimal": decimal.Decimal,
    "uuid": lambda v: uuid.UUID(**v),
}


def _revive(obj: dict[str, Any]) -> Any:
    if obj.keys() == {"__type__", "__value__"}:
        decode = _DECODERS.get(obj["__type__"])
        if decode is not None:
            return decode(obj["__value__"])
    return obj


def decode_meta(raw: bytes | str | None) -> dict[str, Any] | None:
    """A stored result (``status``, ``result``, ``traceback``…) as kombu's JSON reads it."""
    if raw is None:
        return None
    meta = json.loads(raw, object_hook=_revive)
    return meta if isinstance(meta, dict) else None


def set_chord_size(url: str, group_id: str, size: int, expires: int) -> None:
    """Store chord ``group_id``'s header size in the result store at ``url`` (kept ``expires``
    seconds, Celery's ``chord_expires``), as Celery's chord does before sending its parts."""
    runtime().redis(url).set(CHORD_SIZE_KEY.format(group_id=group_id), size, ex=expires or None)


__all__ = ["RESULT_KEY", "CHORD_SIZE_KEY", "READY", "decode_meta", "set_chord_size"]
