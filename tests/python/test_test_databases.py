"""The test databases' prefix on a shared server (issue 15 item 8): configurable, validated,
and the only names the suite ever drops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from credits_db import urls
from credits_db.testing import DEFAULT_PREFIX, PREFIX_VARIABLE, database_prefix
from tests.support.databases import Database, Server

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_prefix() -> None:
    assert database_prefix({}) == DEFAULT_PREFIX == "credits_test_"
    assert database_prefix({PREFIX_VARIABLE: "  "}) == DEFAULT_PREFIX


@pytest.mark.parametrize("prefix", ["ci_42_", "credits_test_h_ops_", "a"])
def test_a_configured_prefix(prefix: str) -> None:
    assert database_prefix({PREFIX_VARIABLE: prefix}) == prefix


@pytest.mark.parametrize("prefix", ["Credits_", "ci-42_", "1ci_", "_ci", 'x"; DROP DATABASE y; --',
                                    "ci 42", "é_", "x" * 41])
def test_a_prefix_that_is_not_a_plain_identifier_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match=PREFIX_VARIABLE):
        database_prefix({PREFIX_VARIABLE: prefix})


def database_exists(server: Server, name: str) -> bool:
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_catalog.pg_database WHERE datname = %s",
                           (name,)).fetchone()
    return row is not None and row[0] == 1


def test_databases_are_made_and_dropped_with_the_prefix(server: Server,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREFIX_VARIABLE, "credits_alt_")
    alternative = Server(server.admin_url)
    assert alternative.prefix == f"credits_alt_{os.getpid()}"
    database = alternative.create()
    try:
        assert database.name.startswith(f"credits_alt_{os.getpid()}_")
        assert database_exists(server, database.name)
    finally:
        alternative.drop(database)
    assert not database_exists(server, database.name)


def test_drop_refuses_a_database_of_another_prefix(server: Server) -> None:
    """Another suite's database on the shared server (here: one made by hand) is never dropped."""
    name = f"someone_elses_{os.getpid()}"
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        foreign = Database(name, urls.with_database(server.admin_url, name))
        with pytest.raises(ValueError, match="refusing to drop"):
            server.drop(foreign)
        other_run = Server(server.admin_url, prefix="credits_other_")
        with pytest.raises(ValueError, match="refusing to drop"):
            other_run.drop(Database(f"{server.prefix}_0", "unused"))
        assert database_exists(server, name)
    finally:
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))


def test_a_bad_prefix_stops_pytest_in_one_line() -> None:
    environment = {**os.environ, PREFIX_VARIABLE: "Bad-Prefix"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider",
         "--collect-only", "-q", "tests/python/test_test_databases.py"],
        capture_output=True, text=True, env=environment, cwd=ROOT, timeout=240)
    assert result.returncode == 4  # pytest's usage error
    assert f"ERROR: {PREFIX_VARIABLE}='Bad-Prefix' is not a usable database name prefix" \
        in result.stderr, result.stderr
