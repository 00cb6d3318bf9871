"""Which database a URL names, as the fleet's presence records compare it (infra/fleet.py)."""

from __future__ import annotations

from lewis_tasks.infra.fleet import database_fingerprint as fp


def test_credentials_and_driver_do_not_change_the_database() -> None:
    a = fp("postgresql://lewis:one@db.internal:5432/lewis")
    assert a == fp("postgresql+psycopg://other:two@db.internal:5432/lewis")
    assert len(a) == 12 and "one" not in a and "db.internal" not in a


def test_another_server_port_or_database_is_another_database() -> None:
    base = fp("postgresql://u:p@db:5432/lewis")
    for url in (
        "postgresql://u:p@db2:5432/lewis",
        "postgresql://u:p@db:5433/lewis",
        "postgresql://u:p@db:5432/other",
        "mysql://u:p@db:5432/lewis",
    ):
        assert fp(url) != base, url


def test_a_sqlite_file_is_one_hosts_own() -> None:
    url = "sqlite:////srv/lewis/.lewis/lewis.db"
    assert fp(url, host="a") == fp(url, host="a")
    assert fp(url, host="a") != fp(url, host="b")  # the same path on two hosts: two files
    assert fp(url, host="a") != fp("sqlite:////srv/lewis/other.db", host="a")
