"""The SSRF regression corpus (``ssrf_corpus.txt``) against forbidden servers that count hits.

Forbidden sinks listen on one port on 127.0.0.1, ::1 and 127.0.0.3 and count every
connection they accept; the allowed server is 127.0.0.2 and redirects wherever it is told.
Every corpus URL — fetched directly, as a redirect's Location with each redirect code, and
behind a second redirect — goes through the real fetch path (``fetch_all`` on the io
worker's session), and a subset through a real io worker's ``fetch_chunk``. The sinks must
count zero. A second run names ``localhost`` in the scope: fetching by that name must not
open its addresses to literal spellings on the same session, pooled connection or not.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from yarl import URL

from lewis_tasks.domain.httpclient import INVALID_URL, OUT_OF_SCOPE, create_session
from lewis_tasks.domain.httpfetch import HttpOutcome, fetch_all
from lewis_tasks.domain.scope import Scope, is_localhost_alias
from tests.support.httpservers import RunningServer, ServerThread, free_port

CORPUS = Path(__file__).with_name("ssrf_corpus.txt")
REFUSED = {OUT_OF_SCOPE, INVALID_URL}
CODES = (301, 302, 303, 307, 308)
ALLOWED_HOST = "127.0.0.2"


def read_corpus() -> dict[str, list[str]]:
    """The corpus file's sections: template lines, comments and blank lines left out."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        else:
            current.append(line)
    return sections


@dataclass
class Stage:
    sinks: list[RunningServer]
    allowed: RunningServer

    @property
    def hits(self) -> int:
        return sum(sum(sink.hits.values()) for sink in self.sinks)

    def fill(self, template: str, port: int | None = None) -> str:
        return template.replace("{port}", str(port or self.sinks[0].port)).replace(
            "{allowed}", f"{ALLOWED_HOST}:{self.allowed.port}"
        )

    def via_redirect(self, target: str, code: int, hops: int = 1) -> str:
        url = target
        for _ in range(hops):
            url = f"/to?url={quote(url, safe='')}&code={code}"
        return self.allowed.url + url


@pytest.fixture(scope="module")
def stage(serve: ServerThread) -> Stage:
    return Stage(_sinks_on_one_port(serve), serve.start("app", ALLOWED_HOST))


def _sinks_on_one_port(thread: ServerThread) -> list[RunningServer]:
    for _ in range(20):
        port = free_port("127.0.0.1")
        try:
            return [thread.start("sink", host, port) for host in ("127.0.0.1", "::1", "127.0.0.3")]
        except OSError:  # taken on another address meanwhile: try another port
            for server in thread.servers:
                thread.call(server._closer())
            thread.servers.clear()
    raise RuntimeError("no port free on 127.0.0.1, ::1 and 127.0.0.3 at once")


def fetch(urls: list[str], scope: Scope, concurrency: int = 8) -> list[HttpOutcome]:
    async def main() -> list[HttpOutcome]:
        session = create_session(
            scope,
            max_connections=20,
            limit_per_host=10,
            connect_timeout=2,
            read_timeout=5,
            keep_alive=True,
        )
        async with session:
            return await fetch_all(
                session,
                urls,
                concurrency=concurrency,
                max_body_bytes=1 << 16,
                max_redirects=5,
                retries=0,
                total_timeout=10.0,
            )

    return asyncio.run(main())


def stayed_allowed(outcome: HttpOutcome) -> bool:
    """Refused, or answered by the allowed server (a Location it read as one of its paths)."""
    if outcome.error in REFUSED:
        return True
    final = URL(outcome.final_url or outcome.url)
    return outcome.error is None and final.raw_host == ALLOWED_HOST


def test_the_corpus_is_large_and_well_formed() -> None:
    corpus = read_corpus()
    assert set(corpus) == {"direct", "location"}
    assert len(corpus["direct"]) >= 100 and len(corpus["location"]) >= 15


def test_every_direct_spelling_is_refused_and_nothing_reaches_a_forbidden_server(
    stage: Stage,
) -> None:
    # Given a scope that allows only the server on 127.0.0.2
    templates = read_corpus()["direct"]
    urls = [stage.fill(t) for t in templates]
    before = stage.hits
    # When every spelling is fetched directly
    outcomes = fetch(urls, Scope.from_allow([f"{ALLOWED_HOST}/32"]))
    # Then each is refused per URL, and no forbidden server accepted a connection
    wrong = [(o.url, o.error, o.message) for o in outcomes if o.error not in REFUSED]
    assert wrong == []
    assert stage.hits == before


def test_every_spelling_as_a_redirect_is_refused_at_the_hop(stage: Stage) -> None:
    corpus = read_corpus()
    targets = [stage.fill(t) for t in corpus["direct"] + corpus["location"]]
    before = stage.hits
    # When the allowed server redirects to each, with every redirect code, and (for every
    # third) behind a second redirect of its own
    urls = [
        stage.via_redirect(t, CODES[i % len(CODES)], hops=1 + (i % 3 == 0))
        for i, t in enumerate(targets)
    ]
    outcomes = fetch(urls, Scope.from_allow([f"{ALLOWED_HOST}/32"]))
    # Then each ends refused or on the allowed server, and no forbidden server saw a thing
    wrong = [
        (t, o.error, o.message, o.final_url)
        for t, o in zip(targets, outcomes, strict=True)
        if not stayed_allowed(o)
    ]
    assert wrong == []
    assert sum(bool(o.redirects) for o in outcomes) == len(outcomes)  # each hop was answered
    assert stage.hits == before


def test_a_named_localhost_opens_nothing_to_literal_spellings(stage: Stage) -> None:
    # Given a scope that names localhost (so its addresses are reachable by that name only)
    scope = Scope.from_allow([f"{ALLOWED_HOST}/32", "localhost"])
    port = stage.sinks[0].port
    corpus = read_corpus()
    literal = [t for t in corpus["direct"] if not _names_localhost(stage.fill(t))]
    named_first = f"http://localhost:{port}/"
    before, requests_before = stage.hits, stage.sinks[0].hits["requests"]
    # When the name is fetched first, then every literal spelling and redirect to one, then
    # the name again — one session, one at a time, so a pooled connection is there to reuse
    urls = (
        [named_first]
        + [stage.fill(t) for t in literal]
        + [stage.via_redirect(stage.fill(t), 302) for t in literal]
        + [named_first]
    )
    outcomes = fetch(urls, scope, concurrency=1)
    # Then the name is answered both times (the sink on 127.0.0.1 counts exactly those) and
    # nothing else reached any forbidden server
    first, *rest, last = outcomes
    assert (first.status, last.status) == (200, 200), (first.message, last.message)
    wrong = [(o.url, o.error, o.message) for o in rest if not stayed_allowed(o)]
    assert wrong == []
    assert stage.sinks[0].hits["requests"] == requests_before + 2  # the pooled one counts too
    assert stage.hits - before in (3, 4)  # the two by name, on one or two connections


def _names_localhost(url: str) -> bool:
    try:
        return is_localhost_alias(URL(url).raw_host or "")
    except ValueError:
        return False


# --- a subset through a real io worker ----------------------------------------------------

WORKER_SUBSET = [
    "http://127.0.0.1:{port}/",
    "http://2130706433:{port}/",
    "http://0x7f.1:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::1]:{port}/",
    "http://[::127.0.0.1]:{port}/",
    "http://127%1:{port}/",
    "http://127.0.0.1%2e.lewis.invalid:{port}/",
    "http://0.0.0.0:{port}/",
    "http://localhost:{port}/",
    "http://{allowed}@127.0.0.1:{port}/",
    "http://127.0.0.3:{port}/",
    "http://1.2.3.4.5:{port}/",
]


def test_a_subset_through_a_real_io_worker(
    celery_worker: Any, lewis_settings: Any, stage: Stage
) -> None:
    from lewis_tasks.infra import aio, config
    from lewis_tasks.producer.http import submit_http_batch

    # Given the worker's settings: scope 127.0.0.2 only, URLs capped at 200 characters
    settings = config.replace_section(config.get_settings(), "scope", allow=(f"{ALLOWED_HOST}/32",))
    config.set_settings(config.replace_section(settings, "http", max_url_length=200))
    aio.shutdown()  # the worker's session and fetchers are rebuilt with them
    before = stage.hits
    allowed = stage.allowed.url
    too_long = f"{allowed}/status/204?q=" + "x" * (201 - len(f"{allowed}/status/204?q="))
    secret = f"http://mallory:0p3n-s3same@{allowed.removeprefix('http://')}/status/203"
    try:
        direct = [stage.fill(t) for t in WORKER_SUBSET]
        redirected = [
            stage.via_redirect(u, code) for u, code in zip(direct, CODES * 3, strict=False)
        ]
        # When a batch mixes them with an allowed URL, one over the cap, one with a password
        # and a POST whose body no bytes can say (a lone surrogate)
        unsayable = {"url": allowed + "/echo", "method": "POST", "body": "caf\udce9"}
        handle = submit_http_batch(
            [allowed + "/", too_long, secret, unsayable, *direct, *redirected], timeout=30
        )
        summary = handle.wait(timeout=60)
        rows = handle.result()
    finally:
        config.set_settings(lewis_settings)
        aio.shutdown()
    # Then the worker refused each per URL, stored no password, and no forbidden server was hit
    assert rows[0]["status"] == 200
    assert (rows[1]["error_class"], rows[1]["error"]) == (
        INVALID_URL,
        "the URL is 201 characters long, over the cap of 200",
    )
    assert rows[2]["status"] == 203 and "0p3n-s3same" not in str(rows[2])
    assert rows[2]["url"].startswith("http://mallory:***@")
    assert (rows[3]["error_class"], rows[3]["error"]) == (
        "invalid_request",
        "the body is not encodable text: surrogates not allowed at position 3",
    )
    assert [(r["url"], r["error_class"]) for r in rows[4:] if r["error_class"] not in REFUSED] == []
    assert summary["failed"] == 2 + len(direct) + len(redirected)
    assert stage.hits == before
