"""Revision 0010 on a database holding data: every account gets one opening lot, nothing a
caller sees changes, and the downgrade refuses to drop expiring credits."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import sqlalchemy.exc

from credits_db import migrate
from tests.support.databases import Database
from tests.support.helpers import Conn
from tests.support.spending import add_member, debit, grant, integrity, refund


def balances(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT user_id, total_credits, used_credits, remaining_credits"
                        " FROM user_credits ORDER BY user_id").fetchall()


def filled_at_0009(db: Database) -> dict[str, Any]:
    """Accounts with grants, debits, a pool debit and a refund, written at revision 0009."""
    migrate.upgrade(db.url, "0009")
    with db.connect() as conn:
        # An admin allocated while the role gave 0 credits: an account whose total is 0.
        conn.execute("UPDATE role_credits SET credits = 0 WHERE role = 'admin'")
        admin, member, spender, fresh = (str(r[0]) for r in conn.execute(
            "INSERT INTO users (role) VALUES ('team_admin'), ('member'), ('member'), ('admin')"
            " RETURNING id").fetchall())
        conn.execute("UPDATE role_credits SET credits = 1000 WHERE role = 'admin'")
        add_member(conn, admin, member)
        grant(conn, spender, 100)
        kept = debit(conn, spender, 300)
        refund(conn, debit(conn, spender, 50)["log_id"])
        debit(conn, member, 500)  # from the pool
        return {"admin": admin, "spender": spender, "kept": kept["log_id"], "fresh": fresh,
                "balances": balances(conn)}


def test_every_existing_account_gets_one_opening_lot_and_nothing_else_changes(
        empty_db: Database) -> None:
    before = filled_at_0009(empty_db)
    migrate.upgrade(empty_db.url, "0010")
    with empty_db.connect() as conn:
        assert balances(conn) == before["balances"]
        lots = conn.execute("SELECT l.user_id, l.source, l.amount, l.log_id, l.tracked"
                            " FROM credit_lots l ORDER BY l.user_id").fetchall()
        totals = {r[0]: r[1] for r in before["balances"]}
        assert [(u, amount) for u, _, amount, _, _ in lots] == \
            [(u, t) for u, t in totals.items() if t > 0]
        assert {(source, log_id, tracked) for _, source, _, log_id, tracked in lots} == \
            {("opening_balance", None, False)}
        assert integrity(conn) == []
        # A debit made before lots is still refunded, into the untracked credits.
        refunded = refund(conn, before["kept"])
        assert refunded["remaining_credits"] == 350 + 100 - 300 + 300
        assert debit(conn, before["spender"], 450)["remaining_credits"] == 0
        assert integrity(conn) == []


def test_down_and_up_again_with_untracked_lots(empty_db: Database) -> None:
    before = filled_at_0009(empty_db)
    migrate.upgrade(empty_db.url, "0010")
    with empty_db.connect() as conn:
        grant(conn, before["spender"], 5, priority=20)  # tracked, but no expiry
    migrate.downgrade(empty_db.url, "0009")
    with empty_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('credit_lots')").fetchone() == (None,)
        assert integrity(conn) == []
    migrate.upgrade(empty_db.url)
    with empty_db.connect() as conn:
        assert integrity(conn) == []


def test_the_downgrade_refuses_while_credits_with_an_expiry_exist(empty_db: Database) -> None:
    before = filled_at_0009(empty_db)
    migrate.upgrade(empty_db.url, "0010")
    with empty_db.connect() as conn:
        expires = conn.execute("SELECT now() + interval '1 day'").fetchone()
        grant(conn, before["spender"], 5, expires_at=expires[0] if expires else None)
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="cannot downgrade below 0010") as caught:
        migrate.downgrade(empty_db.url, "0009")
    assert isinstance(caught.value.orig, psycopg.Error)
    assert caught.value.orig.sqlstate == "55000"
    assert migrate.current(empty_db.url) == "0010"
    with empty_db.connect() as conn:
        assert integrity(conn) == []
