"""LEWIS tasks: the distributed task-queue workers of the LEWIS security platform.

The public producer API is importable from here (loaded on first use, so importing a domain
module stays free of Celery)::

    from lewis_tasks import submit, submit_many, TaskHandle
"""

from __future__ import annotations

from typing import Any

_PRODUCER_NAMES = {"TaskHandle", "submit", "submit_many", "wait_all"}

__all__ = sorted(_PRODUCER_NAMES)


def __getattr__(name: str) -> Any:
    if name in _PRODUCER_NAMES:
        from . import producer

        return getattr(producer, name)
    raise AttributeError(f"module 'lewis_tasks' has no attribute {name!r}")
