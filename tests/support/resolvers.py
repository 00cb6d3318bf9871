"""A resolver that is no guard at all, for the tests of the guards behind it."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from aiohttp.abc import AbstractResolver


class LyingResolver(AbstractResolver):
    """Answers ``answers`` (addresses, any class) for every name, checking nothing."""

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = list(answers)

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[Any]:
        return [
            {
                "hostname": host,
                "host": a,
                "port": port,
                "proto": 0,
                "flags": 0,
                "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
            }
            for a in self.answers
        ]

    async def close(self) -> None:
        pass
