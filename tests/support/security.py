"""Shared helpers for the security tests (no tests here).

The test connection is the superuser that installed credits-db; these helpers
switch it to the roles an application would use (SET ROLE) and to the user a
request acts for (credits.user_id).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support.helpers import Conn

DEBIT = "debit_credits(uuid,integer,text,text,text)"
GRANT = "grant_credits(uuid,integer,text,text,text,timestamp with time zone,integer)"

USER_FUNCTIONS = {"credits_current_user_id()", "get_credit_balance(uuid)", "get_credit_lots(uuid)",
                  DEBIT}
ADMIN_FUNCTIONS = USER_FUNCTIONS | {
    "backfill_user_credits(boolean,integer)",
    "backfill_user_credits_batch(uuid,integer)",
    GRANT,
    "refund_credits(bigint,text)",
    "expire_credits(timestamp with time zone,integer)",
    "renew_allowances(timestamp with time zone,integer)",
    "add_team_member(uuid,uuid)",
    "remove_team_member(uuid,uuid)",
    "verify_credit_integrity()",
    "credit_allocation_report()",
}
USER_TABLES = ("user_credits", "credit_usage_log", "team_credit_sharing", "credit_lots",
               "credit_lot_takes")
ADMIN_TABLES = (*USER_TABLES, "role_credits", "credits_internal.install_record", "credits_backfill_candidates")


def ensure_role(conn: Conn, name: str, *, inherit: bool = True) -> None:
    """CREATE ROLE name NOLOGIN unless it exists. Roles are cluster-wide and
    other test sessions may create the same one at the same moment: the
    loser's duplicate is ignored. Never dropped."""
    conn.execute(
        sql.SQL(
            "DO $ensure$ BEGIN"
            " IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {name}) THEN"
            "  CREATE ROLE {role} NOLOGIN {inherit};"
            " END IF;"
            " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;"
            " END $ensure$"
        ).format(name=sql.Literal(name), role=sql.Identifier(name),
                 inherit=sql.SQL("INHERIT" if inherit else "NOINHERIT"))
    )


@contextmanager
def acting(conn: Conn, role: str, user_id: str | None = None) -> Iterator[Conn]:
    """Run as ``role`` (SET ROLE) for the user ``user_id`` (credits.user_id)."""
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    conn.execute("SELECT set_config('credits.user_id', %s, false)", (user_id or "",))
    try:
        yield conn
    finally:
        conn.execute("RESET ROLE")
        conn.execute("RESET credits.user_id")


def refused(conn: Conn, query: str, params: Any = None, sqlstate: str = "42501") -> str:
    """Run ``query``, expect ``sqlstate``; return the error message."""
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(query, params)
    assert caught.value.sqlstate == sqlstate, caught.value
    return str(caught.value)


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]
