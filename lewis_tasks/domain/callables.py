"""What may be profiled or benchmarked, and how far: a name registry and the run bounds.

Profiles and benchmarks run code in a worker on an operator's request, so the request names a
*registered* callable — never a dotted import path, which would let a message run any function
the worker can import. The bounds (seconds, iterations, rows, concurrency) come from the
``profiling`` settings section; the tasks build :class:`Limits` from it and every run checks
its request against them before starting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from ..errors import InvalidInput

F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,127}")


class Registry:
    """Callables registered under a name; lookups of any other name are refused.

    Use one registry per purpose (e.g. ``PROFILABLE``, ``BENCHMARKS``), so that a name
    registered for benchmarking cannot be profiled by accident and vice versa.
    """

    def __init__(self, kind: str = "callable") -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, func: F | None = None) -> Any:
        """Register ``func`` as ``name``; without ``func``, return a decorator that does."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidInput(
                f"{self.kind} name {name!r} is not allowed: use letters, digits and . _ - : "
                "starting with a letter, at most 128 characters"
            )

        def add(target: F) -> F:
            if not callable(target):
                raise InvalidInput(f"{self.kind} {name!r}: {target!r} is not callable")
            known = self._items.get(name)
            if known is not None and known is not target:
                raise InvalidInput(
                    f"{self.kind} name {name!r} is already registered to {qualified_name(known)}"
                )
            self._items[name] = target
            return target

        return add if func is None else add(func)

    def get(self, name: str) -> Callable[..., Any]:
        """The callable registered as ``name``; InvalidInput naming the known ones otherwise."""
        func = self._items.get(name) if isinstance(name, str) else None
        if func is None:
            known = ", ".join(sorted(self._items)) or "none"
            raise InvalidInput(f"unknown {self.kind} {name!r}; registered: {known}")
        return func

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def qualified_name(obj: Any) -> str:
    """``module.QualName`` of a function or class; builtins bare (``ValueError``, ``len``)."""
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or repr(obj)
    return name if module == "builtins" else f"{module}.{name}"


@dataclass(frozen=True)
class Limits:
    """The configured ceilings on one profile or benchmark request (``profiling`` settings)."""

    max_seconds: float
    top_n: int
    max_iterations: int
    max_concurrent: int

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Limits:
        """Pick this class's fields out of e.g. ``dataclasses.asdict(settings.profiling)``."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def check_seconds(self, seconds: float) -> float:
        return require_within("max_seconds", seconds, self.max_seconds, "profiling.max_seconds")

    def check_top_n(self, top_n: int) -> int:
        return int(require_within("top_n", top_n, self.top_n, "profiling.top_n"))

    def check_iterations(self, count: int, what: str = "iterations") -> int:
        return int(require_within(what, count, self.max_iterations, "profiling.max_iterations"))

    def check_concurrent(self, workers: int) -> int:
        return int(
            require_within("max_workers", workers, self.max_concurrent, "profiling.max_concurrent")
        )


def require_within(what: str, value: float, cap: float | None, cap_name: str) -> float:
    """``value`` if it is a positive number not over ``cap``; InvalidInput naming both otherwise.

    ``cap=None`` checks only that the value is a positive number (library use without settings).
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidInput(f"{what} must be a number, got {value!r}")
    if value <= 0:
        raise InvalidInput(f"{what} must be greater than 0, got {value}")
    if cap is not None and value > cap:
        raise InvalidInput(f"{what}={value} is over the bound {cap_name}={cap}")
    return value


__all__ = ["Limits", "Registry", "qualified_name", "require_within"]
