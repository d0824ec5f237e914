"""URL handling, test-server selection, the query file and the error map."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from credits_db import errors, urls
from credits_db._queries import QUERIES, parse
from credits_db._resources import sql_files
from credits_db.testing import ServerKind, choose_server


@pytest.mark.parametrize(
    ("given", "libpq", "sqlalchemy"),
    [
        ("postgresql://u:p@h:5432/d", "postgresql://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
        ("postgres://u@h/d", "postgresql://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg://u@h/d?sslmode=require", "postgresql://u@h/d?sslmode=require",
         "postgresql+psycopg://u@h/d?sslmode=require"),
        ("postgresql+psycopg2://u@h/d", "postgresql://u@h/d", "postgresql+psycopg://u@h/d"),
        ("  postgresql://u@/d?host=/tmp/x  ", "postgresql://u@/d?host=/tmp/x",
         "postgresql+psycopg://u@/d?host=/tmp/x"),
    ],
)
def test_urls_are_normalised_both_ways(given: str, libpq: str, sqlalchemy: str) -> None:
    assert urls.to_libpq(given) == libpq
    assert urls.to_sqlalchemy(given) == sqlalchemy


@pytest.mark.parametrize("bad", ["mysql://u@h/d", "h:5432", "", "http://x"])
def test_non_postgres_urls_are_refused(bad: str) -> None:
    with pytest.raises(urls.InvalidDatabaseUrl):
        urls.to_libpq(bad)


def test_passwords_are_redacted_in_messages() -> None:
    assert urls.redact("postgresql://u:secret@h/d") == "postgresql://u:***@h/d"
    with pytest.raises(urls.InvalidDatabaseUrl) as excinfo:
        urls.to_libpq("mysql://u:secret@h/d")
    assert "secret" not in str(excinfo.value)


def test_with_database_keeps_host_and_options() -> None:
    assert urls.with_database("postgresql://u@/postgres?host=/tmp/s", "x_1") == (
        "postgresql://u@/x_1?host=/tmp/s"
    )


def test_a_configured_url_wins_and_docker_is_not_asked() -> None:
    def docker() -> bool:
        raise AssertionError("docker must not be asked when a URL is configured")

    assert choose_server({"CREDITS_DB_TEST_URL": "postgresql://x"}, docker) is ServerKind.ENVIRONMENT


def test_testcontainers_when_docker_answers() -> None:
    assert choose_server({}, lambda: True) is ServerKind.TESTCONTAINERS
    assert choose_server({"CREDITS_DB_TEST_URL": "  "}, lambda: True) is ServerKind.TESTCONTAINERS


def test_embedded_when_nothing_else() -> None:
    assert choose_server({}, lambda: False) is ServerKind.EMBEDDED


def test_query_file_parses_names_and_strips_comments() -> None:
    parsed = parse("-- name: a\n-- about a\nSELECT 1;\n\n-- name: b\nSELECT\n  2;\n")
    assert parsed == {"a": "SELECT 1", "b": "SELECT\n  2"}
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    assert "backfill_user_credits" in QUERIES["backfill"]


def test_every_sqlstate_raised_in_sql_is_mapped() -> None:
    raised = {
        code
        for path in sql_files()
        for code in re.findall(r"ERRCODE = '(\w{5})'", path.read_text())
    }
    install_only = {"42703", "42809"}  # raised by the install check, never by a call
    assert raised - install_only <= set(errors.SQLSTATES)


def test_sql_files_are_numbered_uniquely() -> None:
    numbers = [Path(p).name.split("_", 1)[0] for p in sql_files()]
    assert len(numbers) == len(set(numbers))
    assert numbers == sorted(numbers)
