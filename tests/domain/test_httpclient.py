"""The session factory's SSRF guard, against real loopback servers.

The scope is narrowed to 127.0.0.2/32 so a server on 127.0.0.1 is *outside* it: every way of
spelling 127.0.0.1 must be refused before a byte reaches that server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest

from lewis_tasks.domain.httpclient import (
    CONNECTION_REFUSED,
    INVALID_URL,
    OUT_OF_SCOPE,
    TLS,
    TOO_LARGE,
    ScopedConnector,
    ScopedResolver,
    classify_error,
    create_session,
    guarded_socket_factory,
    is_localhost_alias,
)
from lewis_tasks.domain.scope import Scope
from lewis_tasks.errors import OutOfScope
from tests.support.httpservers import RunningServer, ServerThread, free_port
from tests.support.resolvers import LyingResolver

T = TypeVar("T")
NARROW = Scope.from_allow(["127.0.0.2/32"])


@pytest.fixture(scope="module")
def servers(serve: ServerThread) -> ServerThread:
    serve.start("app", "127.0.0.1")
    serve.start("app", "127.0.0.2")
    serve.start("app", "127.0.0.3")  # plays the proxy
    serve.start("huge_headers", "127.0.0.2")
    return serve


def outside(servers: ServerThread) -> RunningServer:
    return servers.servers[0]


def inside(servers: ServerThread) -> RunningServer:
    return servers.servers[1]


def run_with_session(scope: Scope, use: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    async def main() -> T:
        session = create_session(
            scope,
            max_connections=10,
            limit_per_host=5,
            connect_timeout=2,
            read_timeout=5,
            keep_alive=True,
        )
        async with session:
            return await use(session)

    return asyncio.run(main())


def get(url: str, scope: Scope = NARROW) -> tuple[int | None, str | None, str]:
    """(status, None, body) or (None, error class, message)."""

    async def use(session: aiohttp.ClientSession) -> tuple[int | None, str | None, str]:
        try:
            async with session.get(url, allow_redirects=False) as resp:
                return resp.status, None, await resp.text()
        except Exception as exc:
            error, message = classify_error(exc)
            return None, error, message

    return run_with_session(scope, use)


SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0x7f000001",
    "0x7f.1",
    "127.1",
    "0177.0.0.1",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "localhost",
    "LOCALHOST",
    "localhost.",
    "localhost.localdomain",
    "foo.localhost",
]


@pytest.mark.parametrize("host", SPELLINGS)
def test_every_spelling_of_an_out_of_scope_address_is_refused(
    servers: ServerThread, host: str
) -> None:
    # Given a server on 127.0.0.1 and a scope that only allows 127.0.0.2
    target = outside(servers)
    before = sum(target.hits.values())
    # When the session is asked for it by any spelling
    status, error, message = get(f"http://{host}:{target.port}/")
    # Then nothing is fetched and the server never sees a request
    assert status is None
    assert error in (OUT_OF_SCOPE, INVALID_URL), (
        message
    )  # aiohttp rejects 127.1 / 2130706433 itself
    assert sum(target.hits.values()) == before


def test_ipv6_loopback_literal_is_refused_by_the_socket_factory(servers: ServerThread) -> None:
    status, error, message = get(f"http://[::1]:{outside(servers).port}/")
    assert (status, error) == (None, OUT_OF_SCOPE), message
    assert "::1" in message


def test_the_allowed_server_answers(servers: ServerThread) -> None:
    assert get(inside(servers).url + "/") == (200, None, "hello")


def test_default_scope_lets_loopback_through(servers: ServerThread) -> None:
    status, _, body = get(f"http://localhost:{outside(servers).port}/", Scope.from_allow())
    assert (status, body) == (200, "hello")


def test_an_allowlisted_name_vouches_for_its_addresses(servers: ServerThread) -> None:
    scope = Scope.from_allow(["127.0.0.2/32", "localhost"])
    status, error, message = get(f"http://localhost:{outside(servers).port}/", scope)
    assert status == 200, message


@pytest.mark.parametrize("scheme", ["ftp", "file", "gopher", "ws"])
def test_only_http_and_https_are_spoken(servers: ServerThread, scheme: str) -> None:
    status, error, _ = get(f"{scheme}://127.0.0.2:{inside(servers).port}/")
    assert (status, error) == (None, INVALID_URL)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
def test_proxies_from_the_environment_are_ignored(
    servers: ServerThread, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, target = servers.servers[2], inside(servers)
    monkeypatch.setenv(variable, proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied_before = sum(proxy.hits.values())
    status, _, body = get(target.url + "/", Scope.from_allow(["127.0.0.0/8"]))
    assert (status, body) == (200, "hello")
    assert sum(proxy.hits.values()) == proxied_before


def test_https_proxy_from_the_environment_is_ignored(
    servers: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, target = servers.servers[2], inside(servers)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("https_proxy", proxy.url)
    before = sum(proxy.hits.values())
    # the target speaks plain HTTP, so a direct https:// attempt fails in the TLS handshake;
    # through the proxy it would have been a CONNECT the proxy counts
    status, error, _ = get(
        target.url.replace("http://", "https://") + "/", Scope.from_allow(["127.0.0.0/8"])
    )
    assert (status, error) == (None, TLS)
    assert sum(proxy.hits.values()) == before


def test_errors_are_classified(servers: ServerThread) -> None:
    scope = Scope.from_allow(["127.0.0.0/8"])
    assert get(f"http://127.0.0.2:{free_port('127.0.0.2')}/", scope)[1] == CONNECTION_REFUSED
    assert get(f"https://127.0.0.2:{inside(servers).port}/", scope)[1] == TLS
    assert get(servers.servers[3].url + "/", scope)[1] == TOO_LARGE


def test_resolver_answers_localhost_aliases_without_dns() -> None:
    async def main() -> list[Any]:
        resolver = ScopedResolver(Scope.from_allow())
        try:
            return await resolver.resolve("localhost.localdomain", 80)
        finally:
            await resolver.close()

    hosts = {result["host"] for result in asyncio.run(main())}
    assert hosts == {"127.0.0.1", "::1"}


def test_resolver_refuses_numeric_names_outside_scope() -> None:
    async def main() -> None:
        resolver = ScopedResolver(NARROW)
        try:
            await resolver.resolve("0x7f000001", 80)
        finally:
            await resolver.close()

    with pytest.raises(OutOfScope, match="127.0.0.1"):
        asyncio.run(main())


def test_localhost_aliases() -> None:
    assert all(
        map(is_localhost_alias, ["localhost", "LocalHost.", "a.localhost", "localhost.localdomain"])
    )
    assert not any(map(is_localhost_alias, ["localhostx", "localhost.example", "mylocalhost"]))


def test_session_must_be_created_on_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        create_session(
            NARROW,
            max_connections=1,
            limit_per_host=1,
            connect_timeout=1,
            read_timeout=1,
            keep_alive=True,
        )


# --- a name's permission belongs to its own request (issue 12, item 1) ---------------------


def test_a_name_opens_its_addresses_for_its_own_requests_only(servers: ServerThread) -> None:
    # Given a scope that names localhost but allows only 127.0.0.2 by address
    scope = Scope.from_allow(["127.0.0.2/32", "localhost"])
    target = outside(servers)  # on 127.0.0.1: reachable by the name only
    port = target.port

    async def use(session: aiohttp.ClientSession) -> list[tuple[int | None, str | None, str]]:
        seen = []
        for url in [
            f"http://localhost:{port}/",
            f"http://127.0.0.1:{port}/",
            f"http://[::ffff:127.0.0.1]:{port}/",
            f"http://[::ffff:7f00:1]:{port}/",
            f"http://[::1]:{port}/",
            f"http://localhost:{port}/",
        ]:
            try:
                async with session.get(url, allow_redirects=False) as resp:
                    seen.append((resp.status, None, await resp.text()))
            except Exception as exc:
                seen.append((None, *classify_error(exc)))
        return seen

    before = sum(target.hits.values())
    # When the name is fetched (a keep-alive connection stays in the pool), then the address
    # it resolved to is asked for by literal spellings, on the same session
    first, *literals, again = run_with_session(scope, use)
    # Then the name is answered, before and after, and every literal is refused
    assert first[:1] == again[:1] == (200,), (first, again)
    assert [r[1] for r in literals] == [OUT_OF_SCOPE] * len(literals), literals
    assert "127.0.0.1 is out of scope: not in the allowlist 127.0.0.2/32" in literals[0][2]
    assert sum(target.hits.values()) == before + 2  # the two by name, nothing else


@pytest.mark.parametrize(
    "answers", [["0.0.0.0"], ["224.0.0.1"], ["::"], ["255.255.255.255"], ["0.0.0.0", "::"]]
)
def test_the_socket_factory_refuses_never_allowed_peers_whatever_names_them(
    servers: ServerThread, answers: list[str]
) -> None:
    # Given a resolver that is no guard at all: it answers never-allowed addresses for a name
    # the allowlist names, so only the socket factory stands between the name and connect()

    scope = Scope.from_allow(["0.0.0.0/0", "::/0", "*.lab.test"])
    target = outside(servers)
    before = sum(target.hits.values())

    async def main() -> tuple[str, str]:
        connector = ScopedConnector(
            scope, resolver=LyingResolver(answers), socket_factory=guarded_socket_factory(scope)
        )
        async with aiohttp.ClientSession(connector=connector) as session:
            try:
                await session.get(f"http://db.lab.test:{target.port}/")
            except Exception as exc:
                return classify_error(exc)
        return "", "fetched"

    error, message = asyncio.run(main())
    # Then no address gets a socket (0.0.0.0 and :: would reach the server on loopback)
    assert message != "fetched" and sum(target.hits.values()) == before
    if len(answers) == 1:  # (happy eyeballs over several refused peers loses the class)
        assert error == OUT_OF_SCOPE, message
        assert message.startswith(f"{answers[0]} is out of scope: "), message
        assert message.endswith("es are never allowed"), message


def test_a_proxy_is_refused_rather_than_vouched_for(servers: ServerThread) -> None:
    proxy, target = servers.servers[2], inside(servers)
    before = sum(proxy.hits.values())

    async def use(session: aiohttp.ClientSession) -> tuple[str, str]:
        try:
            await session.get(target.url + "/", proxy=proxy.url)
        except Exception as exc:
            return classify_error(exc)
        return "", "fetched"

    error, message = run_with_session(Scope.from_allow(["127.0.0.2/32", "127.0.0.3/32"]), use)
    assert error == OUT_OF_SCOPE and message.startswith(f"proxy {proxy.url} refused"), message
    assert sum(proxy.hits.values()) == before


def test_the_resolver_keeps_nothing_between_requests() -> None:
    async def main() -> dict[str, Any]:
        resolver = ScopedResolver(Scope.from_allow(["localhost"]))
        await resolver.resolve("localhost", 80)
        state = dict(vars(resolver))
        await resolver.close()
        return state

    assert set(asyncio.run(main())) == {"_scope", "_inner"}


def test_the_connector_refuses_an_out_of_scope_literal_before_its_pool(
    servers: ServerThread,
) -> None:
    # Given a connector whose socket factory guards nothing (plain sockets), so only the
    # connector's own look at the request's host stands in the way
    target = outside(servers)
    before = sum(target.hits.values())

    async def main() -> list[tuple[str, str]]:
        connector = ScopedConnector(NARROW, resolver=ScopedResolver(NARROW))
        seen = []
        async with aiohttp.ClientSession(connector=connector) as session:
            for host in ("127.0.0.1", "[::ffff:7f00:1]", "[::1]"):
                try:
                    await session.get(f"http://{host}:{target.port}/")
                    seen.append(("", "fetched"))
                except Exception as exc:
                    seen.append(classify_error(exc))
        return seen

    results = asyncio.run(main())
    assert [error for error, _ in results] == [OUT_OF_SCOPE] * 3, results
    assert results[0][1] == "127.0.0.1 is out of scope: not in the allowlist 127.0.0.2/32"
    assert results[2][1].startswith("::1 is out of scope")
    assert sum(target.hits.values()) == before
