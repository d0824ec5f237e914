"""credit_usage_log is append-only, for every role including its owner."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.helpers import Conn, add_users, log_rows


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE credit_usage_log SET amount = 999999",
        "UPDATE credit_usage_log SET description = 'edited' WHERE false",
        "DELETE FROM credit_usage_log",
        "TRUNCATE credit_usage_log",
    ],
)
def test_changes_are_refused_with_cr010(conn: Conn, statement: str) -> None:
    [user] = add_users(conn, "admin")
    with pytest.raises(psycopg.Error) as excinfo:
        conn.execute(statement)
    assert excinfo.value.sqlstate == "CR010"
    assert "append-only" in str(excinfo.value)
    assert log_rows(conn, user) == [(1000, "credit", "signup", "signup allocation for role admin")]


@pytest.mark.parametrize(
    ("amount", "kind"), [(0, "credit"), (-5, "credit"), (5, "debit"), (0, "debit")]
)
def test_amount_sign_must_match_type(conn: Conn, amount: int, kind: str) -> None:
    [user] = add_users(conn, "admin")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO credit_usage_log (user_id, amount, type, source) VALUES (%s, %s, %s, 't')",
            (user, amount, kind),
        )


def test_balance_cannot_go_negative(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE user_credits SET used_credits = 351 WHERE user_id = %s", (user,))


def test_history_query_uses_the_account_index(conn: Conn) -> None:
    conn.execute("INSERT INTO users (role) SELECT 'member' FROM generate_series(1, 2000)")
    conn.execute("ANALYZE credit_usage_log")
    [user] = add_users(conn, "admin")
    plan = "\n".join(
        row[0]
        for row in conn.execute(
            "EXPLAIN SELECT * FROM credit_usage_log WHERE user_id = %s"
            " ORDER BY created_at DESC, id DESC LIMIT 10",
            (user,),
        )
    )
    assert "credit_usage_log_account_history_idx" in plan
    assert "Sort" not in plan
