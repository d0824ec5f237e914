"""Bad input on the command line: one clear ``credits-db: error:`` line, exit 1 or 2."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tests.support.databases import Database
from tests.support.helpers import add_users

UNKNOWN = str(uuid.UUID(int=12345))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "credits_db.cli", *args],
        capture_output=True, text=True, env=environment, timeout=120,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode in (1, 2), result
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("credits-db: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert result.stdout == ""


# (arguments with USER / ADMIN placeholders, words the error line must contain)
CASES: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("debit", "USER", "0"), ("InvalidAmount", "0")),
    (("debit", "USER", "-5"), ("InvalidAmount", "-5")),
    (("grant", "USER", "0"), ("InvalidAmount",)),
    (("grant", "USER", "-1"), ("InvalidAmount",)),
    (("grant", "USER", "2147483647"), ("InvalidAmount", "2147483647")),  # total overflows
    (("debit", "USER", "351"), ("InsufficientCredits",)),
    (("debit", UNKNOWN, "5"), ("UnknownUser", UNKNOWN)),
    (("grant", UNKNOWN, "5"), ("UnknownUser", UNKNOWN)),
    (("balance", UNKNOWN), ("UnknownUser", UNKNOWN)),
    (("debit", "not-a-uuid", "5"), ("InvalidArgument", "not-a-uuid")),
    (("grant", "\U0001f642", "5"), ("InvalidArgument",)),
    (("balance", "nobody"), ("InvalidArgument", "nobody")),
    (("history", "nobody"), ("InvalidArgument", "nobody")),
    (("debit", "USER", "5", "--source="), ("InvalidArgument", "p_source")),
    (("grant", "USER", "5", "--source", ""), ("InvalidArgument", "p_source")),
    (("debit", "USER", "5", "--idempotency-key="), ("InvalidArgument", "idempotency_key")),
    (("team", "add", "ADMIN", "ADMIN"), ("SelfTeamMembership",)),
    (("team", "add", "USER", "ADMIN"), ("NotTeamAdmin",)),
    (("team", "add", UNKNOWN, "USER"), ("UnknownUser", UNKNOWN)),
    (("team", "add", "ADMIN", UNKNOWN), ("UnknownUser", UNKNOWN)),
    (("team", "add", "nobody", "USER"), ("InvalidArgument", "nobody")),
    (("team", "remove", "ADMIN", "nobody"), ("InvalidArgument", "nobody")),
    (("team", "add", "ADMIN"), ("ADMIN and MEMBER",)),
    (("history", "USER", "--limit", "0"), ("--limit",)),
]


def test_bad_input_is_one_clear_line(db: Database) -> None:
    with db.connect() as conn:
        admin, user = add_users(conn, "team_admin", "member")
    for args, words in CASES:
        argv = [admin if a == "ADMIN" else user if a == "USER" else a for a in args]
        assert_one_clear_line(cli(*argv, "--url", db.url), *words)
    with db.connect() as conn:  # nothing was written by any of them
        assert conn.execute("SELECT count(*) FROM credit_usage_log").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM team_credit_sharing").fetchone() == (0,)


def test_a_lost_connection_is_one_clear_line(db: Database) -> None:
    """The database goes away: ConnectionLost (or a refused connection), still one line."""
    result = cli("balance", UNKNOWN, "--url", db.url.rsplit("/", 1)[0] + "/no_such_database")
    assert_one_clear_line(result, "no_such_database")




@pytest.mark.parametrize("amount", ["2147483648", "-2147483649", "99999999999999999999"])
@pytest.mark.parametrize("command", ["debit", "grant"])
def test_amount_outside_int4_names_the_amount(db: Database, command: str, amount: str) -> None:
    with db.connect() as conn:
        [user] = add_users(conn, "member")
    result = cli(command, user, amount, "--url", db.url)
    assert_one_clear_line(result)
    assert "InvalidAmount" in result.stderr or "amount" in result.stderr.split("error:")[1]
    assert "does not exist" not in result.stderr


def test_debit_of_int_min_is_invalid_amount(db: Database) -> None:
    with db.connect() as conn:
        [user] = add_users(conn, "member")
    assert_one_clear_line(cli("debit", user, "-2147483648", "--url", db.url), "InvalidAmount")


@pytest.mark.parametrize("args", [("debit", UNKNOWN, "abc"), ("debit", UNKNOWN),
                                  ("grant", UNKNOWN, "1.5"), ("history", UNKNOWN, "--limit", "x"),
                                  ("team", "join", UNKNOWN)])
def test_usage_errors_are_one_line(args: tuple[str, ...]) -> None:
    result = cli(*args, "--url", "postgresql://x@127.0.0.1:1/y")
    assert result.returncode == 2
    assert_one_clear_line(result)
