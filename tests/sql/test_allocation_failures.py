"""A failed signup allocation is recorded in credit_allocation_failures, shown, and cleared
by whatever opens the account (the backfill, a grant, a role change)."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.helpers import (
    Conn,
    add_users,
    add_users_whose_allocation_fails,
    allocation_failures,
    balance,
)
from tests.support.security import acting, one
from tests.support.spending import grant, integrity


def test_a_failed_signup_allocation_is_recorded_for_every_user_of_the_statement(
        conn: Conn) -> None:
    warnings: list[str] = []
    conn.add_notice_handler(lambda diag: warnings.append(diag.message_primary or ""))
    users = add_users_whose_allocation_fails(conn, "member", "admin")
    assert all(balance(conn, user) is None for user in users)
    failures = allocation_failures(conn)
    assert sorted(failures) == sorted(users)
    for sqlstate, message in failures.values():
        assert sqlstate == "23514"
        assert "test_refuse_signup" in message
    assert any("signup allocation failed" in w for w in warnings)
    detail, failed_at = conn.execute(
        "SELECT detail, failed_at = now() FROM credit_allocation_failures LIMIT 1").fetchone() \
        or (None, None)
    assert detail is not None and "Failing row contains" in detail
    assert failed_at is False  # the signup's own transaction, committed before this one
    assert one(conn, "SELECT credit_allocation_report()")["allocation_failures"] == 2


def test_the_backfill_clears_the_failures_of_the_users_it_allocates_and_only_those(
        conn: Conn) -> None:
    users = add_users_whose_allocation_fails(conn, "member", "admin", "member")
    report = one(conn, "SELECT backfill_user_credits(false, 2)")
    assert report["users_backfilled"] == 2
    allocated = {u for u in users if balance(conn, u) is not None}
    assert set(allocation_failures(conn)) == set(users) - allocated
    one(conn, "SELECT backfill_user_credits_batch(NULL::uuid, 10)")
    assert allocation_failures(conn) == {}
    assert integrity(conn) == []


def test_a_dry_run_clears_nothing(conn: Conn) -> None:
    users = add_users_whose_allocation_fails(conn, "member")
    assert one(conn, "SELECT backfill_user_credits(true)")["users_backfilled"] == 1
    assert set(allocation_failures(conn)) == set(users)


def test_a_grant_or_a_role_change_that_opens_the_account_clears_the_failure(conn: Conn) -> None:
    granted, promoted = add_users_whose_allocation_fails(conn, "member", "member")
    grant(conn, granted, 5)
    conn.execute("UPDATE users SET role = 'admin' WHERE id = %s", (promoted,))
    assert balance(conn, granted) == (355, 0, 355)
    assert balance(conn, promoted) == (1000, 0, 1000)
    assert allocation_failures(conn) == {}
    assert integrity(conn) == []


def test_a_deleted_user_takes_the_failure_along(conn: Conn) -> None:
    [user] = add_users_whose_allocation_fails(conn, "member")
    conn.execute("DELETE FROM users WHERE id = %s", (user,))
    assert allocation_failures(conn) == {}


def test_the_signup_stands_when_the_failure_cannot_be_recorded_either(conn: Conn) -> None:
    warnings: list[str] = []
    conn.add_notice_handler(lambda diag: warnings.append(diag.message_primary or ""))
    conn.execute("ALTER TABLE credit_allocation_failures"
                 " ADD CONSTRAINT test_refuse_record CHECK (sqlstate <> '23514')")
    [user] = add_users_whose_allocation_fails(conn, "member")
    assert one(conn, "SELECT count(*) FROM users WHERE id = %s", (user,)) == 1
    assert allocation_failures(conn) == {}
    assert any("could not be recorded" in w for w in warnings)


def test_a_credits_user_sees_only_its_own_failure(conn: Conn) -> None:
    mine, other = add_users_whose_allocation_fails(conn, "member", "member")
    with acting(conn, "credits_user", mine):
        seen = conn.execute("SELECT user_id::text FROM credit_allocation_failures").fetchall()
        assert seen == [(mine,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM credit_allocation_failures")
    with acting(conn, "credits_admin"):
        assert one(conn, "SELECT count(*) FROM credit_allocation_failures") == 2
    assert other in allocation_failures(conn)


def test_a_later_signup_of_healthy_users_records_nothing(conn: Conn) -> None:
    add_users(conn, "member")
    assert allocation_failures(conn) == {}
