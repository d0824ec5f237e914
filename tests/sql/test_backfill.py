"""backfill_user_credits(): allocation by role for users who existed before credits-db."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support.helpers import (
    Conn,
    add_users,
    add_users_without_credits,
    balance,
    ledger_mismatches,
    log_rows,
)


def backfill(conn: Conn, *args: Any) -> dict[str, Any]:
    placeholders = ", ".join(["%s"] * len(args))
    row = conn.execute(f"SELECT backfill_user_credits({placeholders})", args).fetchone()
    assert row is not None
    result: dict[str, Any] = row[0]
    return result


def test_allocates_by_role_and_reports(conn: Conn) -> None:
    users = add_users_without_credits(conn, "member", "team_admin", "super_admin", None, "Boss")
    add_users(conn, "admin")  # already allocated at signup: left alone
    summary = backfill(conn)
    assert summary == {
        "users_total": 6,
        "users_without_credits": 5,
        "users_backfilled": 5,
        "credits_allocated": 350 + 5000 + 10000 + 350 + 350,
        "fallback_role_users": 2,
        "by_role": {
            "member": {"users": 1, "credits": 350},
            "team_admin": {"users": 1, "credits": 5000},
            "super_admin": {"users": 1, "credits": 10000},
            "(null)": {"users": 1, "credits": 350},
            "Boss": {"users": 1, "credits": 350},
        },
        "users_skipped": 0, "dry_run": False,
    }
    assert balance(conn, users[1]) == (5000, 0, 5000)
    assert log_rows(conn, users[1]) == [
        (5000, "credit", "backfill", "backfill allocation for role team_admin")
    ]
    assert "unknown role 'Boss'" in log_rows(conn, users[4])[0][3]
    assert "no role" in log_rows(conn, users[3])[0][3]
    assert ledger_mismatches(conn) == []


def test_is_idempotent(conn: Conn) -> None:
    add_users_without_credits(conn, "member", "admin")
    assert backfill(conn)["users_backfilled"] == 2
    again = backfill(conn)
    assert (again["users_without_credits"], again["users_backfilled"], again["by_role"]) == (0, 0, {})
    assert conn.execute("SELECT count(*) FROM credit_usage_log").fetchone() == (2,)


def test_never_overwrites_an_existing_balance(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    conn.execute("UPDATE user_credits SET used_credits = 100 WHERE user_id = %s", (user,))
    conn.execute("UPDATE users SET role = 'member' WHERE id = %s", (user,))
    backfill(conn)
    assert balance(conn, user) == (350, 100, 250)


def test_dry_run_writes_nothing_and_reports_the_same(conn: Conn) -> None:
    add_users_without_credits(conn, "member", "admin", None)
    dry = backfill(conn, True)
    assert conn.execute("SELECT count(*) FROM user_credits").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM credit_usage_log").fetchone() == (0,)
    real = backfill(conn, False)
    assert dry["dry_run"] is True and real["dry_run"] is False
    assert {k: v for k, v in dry.items() if k != "dry_run"} == {
        k: v for k, v in real.items() if k != "dry_run"
    }


def test_limit_processes_batches(conn: Conn) -> None:
    add_users_without_credits(conn, *["member"] * 5)
    first = backfill(conn, False, 2)
    assert (first["users_without_credits"], first["users_backfilled"]) == (5, 2)
    second = backfill(conn, False, 2)
    assert (second["users_without_credits"], second["users_backfilled"]) == (3, 2)
    third = backfill(conn, False, 2)
    assert (third["users_without_credits"], third["users_backfilled"]) == (1, 1)
    assert conn.execute("SELECT count(*) FROM user_credits").fetchone() == (5,)
    assert ledger_mismatches(conn) == []


@pytest.mark.parametrize(("args", "sqlstate"), [((False, 0), "22023"), ((False, -5), "22023"),
                                                ((None, None), "22004")])
def test_bad_arguments_raise_and_change_nothing(conn: Conn, args: tuple[Any, ...],
                                                sqlstate: str) -> None:
    add_users_without_credits(conn, "member")
    with pytest.raises(psycopg.Error) as excinfo:
        backfill(conn, *args)
    assert excinfo.value.sqlstate == sqlstate
    assert conn.execute("SELECT count(*) FROM user_credits").fetchone() == (0,)


def test_uses_current_role_credits(conn: Conn) -> None:
    [user] = add_users_without_credits(conn, "admin")
    conn.execute("UPDATE role_credits SET credits = 1200 WHERE role = 'admin'")
    backfill(conn)
    assert balance(conn, user) == (1200, 0, 1200)


def test_backfill_of_deleted_user_is_impossible_and_log_survives_deletion(conn: Conn) -> None:
    [user] = add_users(conn, "admin")
    conn.execute("DELETE FROM users WHERE id = %s", (user,))
    assert balance(conn, user) is None
    # The audit trail stays: deleting a user never deletes their log rows.
    assert len(log_rows(conn, user)) == 1
    assert backfill(conn)["users_backfilled"] == 0
    assert ledger_mismatches(conn) == []
