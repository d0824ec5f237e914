"""Small helpers shared by the tests."""

from __future__ import annotations

from typing import Any

import psycopg

Conn = psycopg.Connection[tuple[Any, ...]]


def add_users(conn: Conn, *roles: str | None) -> list[str]:
    """Insert one user per role (signup trigger fires); return their ids in order."""
    rows = conn.execute(
        "INSERT INTO users (role) SELECT r FROM unnest(%s::text[]) WITH ORDINALITY AS t(r, n)"
        " ORDER BY n RETURNING id::text",
        (list(roles),),
    ).fetchall()
    return [row[0] for row in rows]


def add_users_without_credits(conn: Conn, *roles: str | None) -> list[str]:
    """Insert users as they existed before credits-db: no balance row, no log row."""
    with conn.transaction():
        conn.execute("ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
        ids = add_users(conn, *roles)
        conn.execute("ALTER TABLE users ENABLE TRIGGER users_allocate_credits")
    return ids


def balance(conn: Conn, user_id: str) -> tuple[int, int, int] | None:
    """(total, used, remaining) or None when the user has no balance row."""
    row = conn.execute(
        "SELECT total_credits, used_credits, remaining_credits FROM user_credits"
        " WHERE user_id = %s",
        (user_id,),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def log_rows(conn: Conn, user_id: str) -> list[tuple[Any, ...]]:
    """(amount, type, source, description) of one account, oldest first."""
    return conn.execute(
        "SELECT amount, type, source, description FROM credit_usage_log"
        " WHERE user_id = %s ORDER BY id",
        (user_id,),
    ).fetchall()


def ledger_mismatches(conn: Conn) -> list[tuple[Any, ...]]:
    """Accounts whose balance disagrees with their log (should always be empty)."""
    return conn.execute(
        """
        SELECT uc.user_id, uc.total_credits, uc.used_credits, uc.remaining_credits,
               coalesce(sum(l.amount), 0),
               coalesce(sum(l.amount) FILTER (WHERE l.type = 'credit'), 0),
               coalesce(-sum(l.amount) FILTER (WHERE l.type = 'debit'), 0)
        FROM user_credits uc LEFT JOIN credit_usage_log l ON l.user_id = uc.user_id
        GROUP BY uc.user_id
        HAVING uc.remaining_credits <> coalesce(sum(l.amount), 0)
            OR uc.total_credits <> coalesce(sum(l.amount) FILTER (WHERE l.type = 'credit'), 0)
            OR uc.used_credits <> coalesce(-sum(l.amount) FILTER (WHERE l.type = 'debit'), 0)
        """
    ).fetchall()


def add_users_whose_allocation_fails(conn: Conn, *roles: str | None) -> list[str]:
    """Sign users up while every signup log row is refused: the allocation fails as
    a whole, the users are created without a balance row and the failure is recorded."""
    with conn.transaction():
        conn.execute("ALTER TABLE credit_usage_log"
                     " ADD CONSTRAINT test_refuse_signup CHECK (source <> 'signup') NOT VALID")
        ids = add_users(conn, *roles)
        conn.execute("ALTER TABLE credit_usage_log DROP CONSTRAINT test_refuse_signup")
    return ids


def allocation_failures(conn: Conn) -> dict[str, tuple[str, str]]:
    """user id -> (sqlstate, message) of every recorded signup allocation failure."""
    rows = conn.execute(
        "SELECT user_id::text, sqlstate, message FROM credit_allocation_failures").fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}
