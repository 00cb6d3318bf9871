"""One request of an HTTP batch: its URL checked and normalised, its method, headers, body.

Parsing happens before any connection: malformed URLs, schemes other than http/https and
unknown methods become InvalidInput naming the flaw. Normalising a numeric host spelling to
the address it means is not the scope check — that happens at connect time in the session.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yarl import URL

from ..errors import InvalidInput
from .httpclient import SCHEMES
from .scope import parse_ip

METHODS = frozenset({"GET", "HEAD", "POST"})


def normalise_url(text: str | URL) -> URL:
    """``text`` as an absolute http(s) URL whose host is canonical; InvalidInput naming the flaw.

    Numeric host spellings (``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``) become the
    address they mean, so the guard and the result both show the real peer.
    """
    if isinstance(text, str):
        return _normalise_text(text)
    return _normalise(text)


@functools.lru_cache(maxsize=4096)  # batches repeat URLs and hosts; parsing is per-URL cost
def _normalise_text(text: str) -> URL:
    return _normalise(text)


def _normalise(text: str | URL) -> URL:
    try:
        url = text if isinstance(text, URL) else URL(text.strip())
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{str(text)!r} is not a URL: {exc}") from None
    if url.scheme not in SCHEMES:
        shown = f"{url.scheme}://" if url.scheme else "no scheme"
        raise InvalidInput(f"{str(text)!r}: only http:// and https:// are fetched, not {shown}")
    host = url.raw_host
    if not host:
        raise InvalidInput(f"{str(text)!r} has no host")
    addr = parse_ip(host)
    if addr is not None:
        return url if str(addr) == host else url.with_host(str(addr))
    if not all(c.isalnum() or c in "-._" for c in host) or host.strip(".") == "":
        raise InvalidInput(f"{str(text)!r}: {host!r} is not a valid host name")
    return url


@dataclass(frozen=True)
class HttpRequest:
    """One request of a batch; build it with :meth:`parse` from a URL string or a dict."""

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None

    @classmethod
    def parse(cls, item: str | Mapping[str, Any] | HttpRequest) -> HttpRequest:
        """From ``"http://…"`` or ``{"url", "method", "headers", "body"}``; InvalidInput if bad."""
        if isinstance(item, HttpRequest):
            return item
        if isinstance(item, str):
            return _plain_get(item)
        if not isinstance(item, Mapping):
            raise InvalidInput(f"a request is a URL or a mapping, not {type(item).__name__}")
        unknown = set(item) - {"url", "method", "headers", "body"}
        if unknown:
            raise InvalidInput(f"unknown request field(s): {', '.join(sorted(unknown))}")
        method = str(item.get("method") or "GET").upper()
        if method not in METHODS:
            raise InvalidInput(f"method {method!r} is not one of {', '.join(sorted(METHODS))}")
        raw_headers = item.get("headers") or {}
        if not isinstance(raw_headers, Mapping):
            raise InvalidInput("headers must be a mapping of name to value")
        headers = tuple((str(k), str(v)) for k, v in raw_headers.items())
        for name, value in headers:
            if not name or any(c in name for c in ":\r\n ") or any(c in value for c in "\r\n"):
                raise InvalidInput(f"header {name!r} is malformed")
        body = item.get("body")
        if isinstance(body, str):
            body = body.encode()
        if body is not None and not isinstance(body, bytes):
            raise InvalidInput("body must be text or bytes")
        if body is not None and method != "POST":
            raise InvalidInput(f"a {method} request carries no body")
        return cls(str(normalise_url(str(item.get("url", "")))), method, headers, body)


@functools.lru_cache(maxsize=4096)
def _plain_get(text: str) -> HttpRequest:
    return HttpRequest(str(normalise_url(text)))


__all__ = ["HttpRequest", "normalise_url", "METHODS"]
