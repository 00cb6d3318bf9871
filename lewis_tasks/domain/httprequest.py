"""One request of an HTTP batch: its URL checked and normalised, its method, headers, body.

Parsing happens before any connection: malformed URLs, schemes other than http/https and
unknown methods become InvalidInput naming the flaw. Normalising a numeric host spelling to
the address it means is not the scope check — that happens at connect time in the session.

A host is read once, the way the session connects (yarl, then :func:`~.scope.parse_ip`),
and must read the same under the URL Standard (:mod:`.urlhost`): a URL that means one peer
to this client and another to a browser or proxy is refused, not guessed at.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yarl import URL

from ..errors import InvalidInput
from .redact import redact_url
from .scope import IPAddress, parse_ip, unmap
from .urlhost import SCHEMES, Base, Host, url_host  # not httpclient's: that imports aiohttp

METHODS = frozenset({"GET", "HEAD", "POST"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP field name (RFC 9110)
# a field value (RFC 9110 §5.5): visible characters, obs-text, spaces and tabs inside, never
# CR, LF, NUL or another control character
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\U0010ffff]*")


def normalise_url(text: str | URL) -> URL:
    """``text`` as an absolute http(s) URL whose host is canonical; InvalidInput naming the flaw.

    Numeric host spellings (``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``) become the
    address they mean, so the guard and the result both show the real peer. A URL whose host
    the URL Standard reads differently is refused. Messages quote the URL with its
    credentials masked: they are shown and stored.
    """
    try:
        if isinstance(text, str):
            return _normalise_text(text)
        return _normalise(str(text))
    except InvalidInput as exc:
        raise InvalidInput(redact_url(str(exc))) from None


def resolve_location(base: URL, location: str) -> URL:
    """The URL a redirect's ``Location`` points to from ``base``, normalised; InvalidInput if
    it is malformed or its host reads differently under the URL Standard."""
    try:
        try:
            target = base.join(URL(location))
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{location!r} is not a URL: {exc}") from None
        url = _normalise(str(target))
        base_host = parse_ip(base.raw_host or "") or (base.raw_host or "")
        _same_host(location, _yarl_host(url), url_host(location, Base(base.scheme, base_host)))
    except InvalidInput as exc:
        raise InvalidInput(redact_url(str(exc))) from None
    return url


@functools.lru_cache(maxsize=4096)  # batches repeat URLs and hosts; parsing is per-URL cost
def _normalise_text(text: str) -> URL:
    url = _normalise(text)
    _same_host(text, _yarl_host(url), url_host(text))
    return url


def _normalise(text: str) -> URL:
    try:
        url = URL(text.strip())
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{text!r} is not a URL: {exc}") from None
    if url.scheme not in SCHEMES:
        shown = f"{url.scheme}://" if url.scheme else "no scheme"
        raise InvalidInput(f"{text!r}: only http:// and https:// are fetched, not {shown}")
    host = url.raw_host
    if not host:
        raise InvalidInput(f"{text!r} has no host")
    addr = parse_ip(host)
    if addr is not None:
        return url if str(addr) == host else url.with_host(str(addr))
    if not all(c.isascii() and (c.isalnum() or c in "-._") for c in host) or host.strip(".") == "":
        raise InvalidInput(f"{text!r}: {host!r} is not a valid host name")
    return url


def _yarl_host(url: URL) -> Host:
    host = url.raw_host or ""
    return parse_ip(host) or host


def _same_host(text: str, ours: Host, standard: Host) -> None:
    """InvalidInput unless the session's reading of the host and the URL Standard's agree."""
    if isinstance(ours, str) or isinstance(standard, str):
        same = ours == standard
    else:
        same = unmap(ours) == unmap(standard)
    if not same:
        raise InvalidInput(
            f"{text!r}: its host reads as {_shown(ours)} to this client but "
            f"{_shown(standard)} under the URL Standard; refused"
        )


def _shown(host: Host) -> str:
    return str(host) if isinstance(host, IPAddress) else repr(host)


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
            check_header(name, value)
        body = item.get("body")
        if isinstance(body, str):
            try:
                body = body.encode()
            except UnicodeEncodeError as exc:  # a lone surrogate: no bytes say it
                raise InvalidInput(
                    f"the body is not encodable text: {exc.reason} at position {exc.start}"
                ) from None
        if body is not None and not isinstance(body, bytes):
            raise InvalidInput("body must be text or bytes")
        if body is not None and method != "POST":
            raise InvalidInput(f"a {method} request carries no body")
        return cls(str(normalise_url(str(item.get("url", "")))), method, headers, body)


def check_header(name: str, value: str) -> None:
    """InvalidInput saying what is wrong if ``name: value`` is no HTTP header field
    (RFC 9110: the name a token, the value without CR, LF or other control characters)."""
    if not _TOKEN.fullmatch(name):
        raise InvalidInput(
            f"header {name!r} is malformed: a name is letters, digits and !#$%&'*+-.^_`|~ only"
        )
    if not _FIELD_VALUE.fullmatch(value) or not _encodes(value):
        raise InvalidInput(
            f"header {name!r} is malformed: its value holds a control character "
            "(CR, LF, NUL…) or a lone surrogate"
        )


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _plain_get(text: str) -> HttpRequest:
    return HttpRequest(str(normalise_url(text)))


__all__ = ["HttpRequest", "normalise_url", "check_header", "METHODS"]
