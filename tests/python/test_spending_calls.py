"""The Python API for spending: typed results and SQLSTATE-mapped exceptions, sync and async."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

import credits_db
from credits_db import aio
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users


def test_debit_grant_refund_balance_roundtrip(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    spent = credits_db.debit(conn, user, 100, source="search", idempotency_key="k1")
    assert isinstance(spent, credits_db.CreditOperation)
    assert (spent.amount, spent.remaining_credits, spent.from_team_pool, spent.replayed) == (
        100, 250, False, False)
    assert spent.account_user_id == uuid.UUID(user) and spent.actor_user_id is None
    again = credits_db.debit(conn, user, 100, source="search", idempotency_key="k1")
    assert again.replayed and again.log_id == spent.log_id
    granted = credits_db.grant(conn, user, 50)
    assert granted.remaining_credits == 300
    refunded = credits_db.refund(conn, spent.log_id, description="oops")
    assert refunded.remaining_credits == 400
    balance = credits_db.balance(conn, user)
    # A refund is a credit: total rises, used keeps the gross spend.
    assert balance.own == credits_db.OwnBalance(500, 100, 400, 400, None)
    assert (balance.team_admin_id, balance.team_pool_remaining, balance.spendable) == (
        None, None, 400)
    history = credits_db.history(conn, user, limit=2)
    assert [e.source for e in history] == ["refund", "admin_grant"]
    assert credits_db.verify(conn) == []


def test_team_pool_through_the_api(conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    credits_db.add_team_member(conn, admin, member)
    credits_db.add_team_member(conn, admin, member)  # again: a no-op
    [row] = credits_db.list_team_members(conn, admin)
    assert row.team_member_id == uuid.UUID(member)
    spent = credits_db.debit(conn, member, 1000)
    assert spent.from_team_pool and spent.account_user_id == uuid.UUID(admin)
    assert spent.actor_user_id == uuid.UUID(member)
    assert credits_db.balance(conn, member).spendable == 4000
    assert credits_db.remove_team_member(conn, admin, member) is True
    assert credits_db.remove_team_member(conn, admin, member) is False
    assert credits_db.list_team_members(conn, admin) == []


@pytest.mark.parametrize(
    ("call", "exception"),
    [
        (lambda c, u: credits_db.debit(c, u["member"], 351), credits_db.InsufficientCredits),
        (lambda c, u: credits_db.debit(c, u["member"], 0), credits_db.InvalidAmount),
        (lambda c, u: credits_db.grant(c, u["member"], 2**31 - 1), credits_db.InvalidAmount),
        (lambda c, u: credits_db.debit(c, str(uuid.uuid4()), 1), credits_db.UnknownUser),
        (lambda c, u: credits_db.balance(c, str(uuid.uuid4())), credits_db.UnknownUser),
        (lambda c, u: credits_db.add_team_member(c, u["member"], u["admin"]),
         credits_db.NotTeamAdmin),
        (lambda c, u: credits_db.add_team_member(c, u["team_admin"], u["team_admin"]),
         credits_db.SelfTeamMembership),
        (lambda c, u: credits_db.refund(c, 10**12), credits_db.AlreadyRefunded),
        (lambda c, u: credits_db.debit(c, "not-a-uuid", 1), credits_db.InvalidArgument),
    ],
)
def test_each_error_is_its_own_exception(conn: Conn, call, exception) -> None:  # type: ignore[no-untyped-def]
    member, admin, team_admin = add_users(conn, "member", "admin", "team_admin")
    users = {"member": member, "admin": admin, "team_admin": team_admin}
    with pytest.raises(exception) as excinfo:
        call(conn, users)
    assert isinstance(excinfo.value, credits_db.CreditsError)
    assert isinstance(excinfo.value.__cause__, psycopg.Error)


def test_idempotency_conflict_and_team_errors(conn: Conn) -> None:
    admin, other_admin, *members = add_users(conn, "team_admin", "team_admin", *["member"] * 5)
    credits_db.debit(conn, members[0], 10, idempotency_key="same")
    with pytest.raises(credits_db.IdempotencyConflict):
        credits_db.debit(conn, members[0], 11, idempotency_key="same")
    for member in members[:4]:
        credits_db.add_team_member(conn, admin, member)
    with pytest.raises(credits_db.TeamFull):
        credits_db.add_team_member(conn, admin, members[4])
    with pytest.raises(credits_db.AlreadyInTeam):
        credits_db.add_team_member(conn, other_admin, members[0])
    spent = credits_db.debit(conn, members[1], 5)
    credits_db.refund(conn, spent.log_id)
    with pytest.raises(credits_db.AlreadyRefunded):
        credits_db.refund(conn, spent.log_id)


def test_async_api_shares_the_calls(db: Database) -> None:
    with db.connect() as setup:
        [user] = add_users(setup, "admin")

    async def main() -> tuple[credits_db.CreditOperation, credits_db.Balance]:
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as conn:
            spent = await aio.debit(conn, user, 300, idempotency_key="a")
            with pytest.raises(credits_db.InsufficientCredits):
                await aio.debit(conn, user, 701)
            return spent, await aio.balance(conn, user)

    spent, balance = asyncio.run(main())
    assert spent.remaining_credits == 700 and balance.spendable == 700
