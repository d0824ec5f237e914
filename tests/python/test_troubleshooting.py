"""The troubleshooting path in the Python API: overview (why no credits), explain_user,
allocation_failures, and the report's failure count."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

import credits_db
from credits_db import aio
from tests.support.databases import Database
from tests.support.helpers import (
    Conn,
    add_users,
    add_users_whose_allocation_fails,
    add_users_without_credits,
)
from tests.support.security import acting


def test_overview_says_why_an_account_has_no_credits(conn: Conn) -> None:
    [active] = add_users(conn, "member")
    [waiting] = add_users_without_credits(conn, "admin")
    [failed] = add_users_whose_allocation_fails(conn, "member")
    credits_db.debit(conn, active, 350)  # spent everything: 0 remaining, but active

    spent = credits_db.overview(conn, active)
    assert (spent.status, spent.message, spent.balance.spendable) == ("active", None, 0)
    assert [e.source for e in spent.recent_usage] == ["usage", "signup"]

    backfill = credits_db.overview(conn, waiting)
    assert backfill.status == "awaiting_backfill"
    assert backfill.message is not None and "waiting for the credits backfill" in backfill.message
    assert backfill.recent_usage == [] and backfill.failure is None

    failure = credits_db.overview(conn, failed)
    assert failure.status == "allocation_failed"
    assert failure.failure is not None and failure.failure.sqlstate == "23514"
    assert failure.message is not None and "signup allocation failed (23514)" in failure.message

    credits_db.backfill(conn)
    assert {credits_db.overview(conn, u).status for u in (waiting, failed)} == {"active"}
    assert credits_db.allocation_failures(conn) == []


def test_explain_user_by_id_and_by_email(conn: Conn) -> None:
    [admin] = add_users(conn, "team_admin")
    conn.execute("UPDATE users SET email = 'boss@example.com' WHERE id = %s", (admin,))
    [member] = add_users_whose_allocation_fails(conn, "RecruitPro")

    by_email = credits_db.explain_user(conn, "boss@example.com")
    assert by_email == credits_db.explain_user(conn, admin)
    assert (by_email.role, by_email.entitlement, by_email.allocated_credits) == (
        "team_admin", 5000, 5000)
    assert (by_email.status, by_email.next_step) == ("active", "nothing to do")

    explained = credits_db.explain_user(conn, member)
    assert (explained.role, explained.entitlement, explained.role_is_fallback) == (
        "RecruitPro", 1000, False)
    assert explained.allocated_credits is None and explained.overview.balance.own is None
    assert explained.status == "allocation_failed"
    assert "credits-db backfill" in explained.next_step

    credits_db.backfill(conn)
    credits_db.add_team_member(conn, admin, member)
    assert credits_db.explain_user(conn, admin).team_members == [
        credits_db.explain_user(conn, member).user_id]


def test_explain_user_refuses_unknown_and_ambiguous_users(conn: Conn) -> None:
    first, second = add_users(conn, "member", "member")
    conn.execute("ALTER TABLE users DROP CONSTRAINT users_email_key")  # a host's may have none
    conn.execute("UPDATE users SET email = 'same@example.com' WHERE id IN (%s, %s)",
                 (first, second))
    with pytest.raises(credits_db.UnknownUser, match=r"nobody@example\.com"):
        credits_db.explain_user(conn, "nobody@example.com")
    with pytest.raises(credits_db.InvalidArgument, match="several users"):
        credits_db.explain_user(conn, "same@example.com")
    with pytest.raises(credits_db.InvalidArgument, match="NUL"):
        credits_db.explain_user(conn, "a\x00b")


def test_explain_user_works_without_an_email_column(conn: Conn) -> None:
    conn.execute("ALTER TABLE users DROP COLUMN email")
    [user] = add_users(conn, None)
    explained = credits_db.explain_user(conn, user)
    assert (explained.email, explained.role, explained.role_is_fallback) == (None, None, True)
    with pytest.raises(credits_db.UnknownUser):
        credits_db.explain_user(conn, "x@example.com")


def test_a_credits_user_gets_only_its_own_overview(conn: Conn) -> None:
    me, other = add_users(conn, "member", "member")
    with acting(conn, "credits_user", me):
        assert credits_db.overview(conn, me).status == "active"
        with pytest.raises(credits_db.PermissionDenied):
            credits_db.overview(conn, other)


def test_the_report_counts_failed_allocations(conn: Conn) -> None:
    add_users_whose_allocation_fails(conn, "member", "admin")
    add_users_without_credits(conn, "member")
    report = credits_db.allocation_report(conn)
    assert (report.users_without_credits, report.allocation_failures) == (3, 2)


def test_async_twins_answer_as_the_sync_calls(db: Database, conn: Conn) -> None:
    [user] = add_users_whose_allocation_fails(conn, "member")

    async def main() -> tuple[Any, ...]:
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as aconn:
            return (await aio.overview(aconn, user), await aio.explain_user(aconn, user),
                    await aio.allocation_failures(aconn))

    assert asyncio.run(main()) == (credits_db.overview(conn, user),
                                   credits_db.explain_user(conn, user),
                                   credits_db.allocation_failures(conn))
