"""LEWIS tasks: the distributed task-queue workers of the LEWIS security platform.

The producer API is importable from here, loaded on first use (so importing a domain module
stays free of Celery)::

    from lewis_tasks import submit_scan, submit_http_batch, submit_loadtest, submit_profile

    report = submit_scan(["127.0.0.1"], ports="1-1024").wait(timeout=120)
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # import_module, not `from . import producer`: the latter asks this very hook for
    # "producer" before the submodule is loaded, and recurses.
    producer = importlib.import_module(f"{__name__}.producer")
    if name in producer.__all__:
        return getattr(producer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(importlib.import_module(f"{__name__}.producer").__all__)
