"""Every failure of the command line is one line on stderr and a non-zero exit (issue 15 item 5)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from credits_db import migrate
from tests.support.cli import cli
from tests.support.databases import Database

NOT_INSTALLED = ("credits-db: error: NotInstalled: credits-db is not installed in this database: "
                 "run credits-db upgrade (DETAIL: ")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def assert_one_line(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


@pytest.mark.parametrize(("args", "revision"), [
    (("upgrade", "9999"), "9999"),
    (("downgrade", "0002x"), "0002x"),
    (("sql", "9999"), "9999"),
])
def test_an_unknown_revision_is_one_line(db: Database, args: tuple[str, ...],
                                         revision: str) -> None:
    result = cli(*args, "--url", db.url)
    assert result.returncode == 2
    assert_one_line(result.stderr)
    assert f"Can't locate revision identified by '{revision}'" in result.stderr
    assert f"(credits-db's revisions: 0001 to {migrate.head()}, or base: not installed)" \
        in result.stderr


@pytest.mark.parametrize("args", [
    ("verify",), ("backfill",), ("backfill", "--batch-size", "10"), ("balance", ZERO_UUID),
    ("debit", ZERO_UUID, "5"), ("history", ZERO_UUID), ("team", "list", ZERO_UUID),
])
def test_a_database_without_credits_db_says_so(empty_db: Database, args: tuple[str, ...]) -> None:
    result = cli(*args, "--url", empty_db.url)
    assert result.returncode == 1
    assert_one_line(result.stderr)
    assert result.stderr.startswith(NOT_INSTALLED), result.stderr
    assert "does not exist)" in result.stderr  # the server's words, as the DETAIL


def test_the_sql_detail_is_kept(db: Database) -> None:
    with db.connect() as conn:
        row = conn.execute("INSERT INTO users (role) VALUES ('member') RETURNING id::text"
                           ).fetchone()
    assert row is not None
    result = cli("debit", row[0], "1000", "--url", db.url)
    assert result.returncode == 1
    assert_one_line(result.stderr)
    assert ("InsufficientCredits: insufficient credits: 1000 requested "
            "(DETAIL: own remaining 350; team pool none (not in a team))") in result.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize("url", [(), ("--url", "postgresql://nobody@127.0.0.1:1/none")])
def test_serve_on_a_busy_port_fails_before_starting_anything(busy_port: int,
                                                             url: tuple[str, ...]) -> None:
    pytest.importorskip("fastapi", reason="the HTTP API needs the api extra")
    result = cli("serve", "--port", str(busy_port), *url,
                 env={"CREDITS_DB_API_SECRET": "s"})
    assert (result.returncode, result.stdout) == (2, "")
    assert_one_line(result.stderr)
    assert f"cannot listen on 127.0.0.1:{busy_port}: Address already in use" in result.stderr
    assert "embedded PostgreSQL" not in result.stderr


def test_upgrade_is_quiet_unless_verbose(empty_db: Database) -> None:
    quiet = cli("upgrade", "--url", empty_db.url)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == f"credits-db is at revision {migrate.head()}\n"
    down = cli("--verbose", "downgrade", "base", "--url", empty_db.url)
    assert down.returncode == 0, down.stderr
    assert "Running downgrade 0001 -> " in down.stderr
    verbose = cli("upgrade", "-v", "--url", empty_db.url)
    assert verbose.returncode == 0, verbose.stderr
    assert "Running upgrade 0001 -> 0002" in verbose.stderr
    # A fresh database has nobody to backfill: nothing is said about it.
    assert "existing user" not in verbose.stderr


def test_upgrade_says_how_many_users_wait_for_the_backfill(empty_db: Database) -> None:
    with empty_db.connect() as conn:
        conn.execute("CREATE TABLE users (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
                     "role text)")
        conn.execute("INSERT INTO users (role) SELECT 'member' FROM generate_series(1, 3)")
    result = cli("upgrade", "--url", empty_db.url)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[1:] == [
        "3 existing user(s) have no credits until the backfill: run credits-db backfill "
        "--batch-size N (or credits-db upgrade --backfill next time)"]
