"""Secrets out of URLs before anything is stored, logged or printed.

A URL's userinfo (``user:password@``, or a bare token ``token@``) is a credential wherever
it appears: a fetched URL, a redirect's Location, an error message quoting either. The
password part, or a bare token whole, becomes ``***``; the user name stays so a reader
can still tell the accounts apart. Pure text in, text out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

MASK = "***"
# scheme://, then the userinfo: up to the last @ before the authority ends (/ ? # or space)
# header names whose values are credentials: Authorization, Proxy-Authorization, Cookie,
# Set-Cookie, X-Api-Key, X-Auth-Token, X-CSRF-Token, anything naming a secret or password
_SECRET_HEADER = re.compile(r"auth|cookie|token|secret|passw|api-?key|session|csrf", re.IGNORECASE)
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#\s]*)@")


def redact_url(text: str) -> str:
    """``text`` with the secret of every URL userinfo in it masked:
    ``http://u:pw@h/`` → ``http://u:***@h/``, ``https://token@h/`` → ``https://***@h/``."""
    if "@" not in text:  # the common case, without the regex
        return text
    return _USERINFO.sub(_mask, text)


def redact_headers(headers: Iterable[Sequence[str]]) -> list[list[str]]:
    """``[name, value]`` pairs with the value of every credential-bearing header
    (Authorization, Cookie, API keys, tokens…) masked whole, for storing or showing."""
    return [[name, MASK if _SECRET_HEADER.search(name) else value] for name, value in headers]


def _mask(match: re.Match[str]) -> str:
    user, colon, _ = match.group(2).partition(":")
    return f"{match.group(1)}{user}:{MASK}@" if colon else f"{match.group(1)}{MASK}@"


__all__ = ["redact_url", "redact_headers", "MASK"]
