"""The producer API: submit work, get handles. Each area adds its ``submit_*`` here."""

from __future__ import annotations

from .base import TaskHandle, submit, submit_many, wait_all

__all__ = ["TaskHandle", "submit", "submit_many", "wait_all"]
