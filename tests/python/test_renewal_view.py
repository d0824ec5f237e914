"""What the Python API says about the next renewal (revision 0011): ``Renewal`` parsed from
``get_credit_balance()``'s ``own.next_renewal`` and ``team_pool_next_renewal`` into the
``Balance`` and the ``Overview``, sync and async."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

import credits_db
from credits_db import aio
from credits_db.models import Balance, Renewal
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, add_users_without_credits
from tests.support.security import one


def renew_monthly(conn: Conn, role: str = "member", cap: int = 100) -> None:
    """Make ``role`` renew monthly with a rollover cap (before its users are added)."""
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month', rollover_cap = %s"
                 " WHERE role = %s", (cap, role))


def period_end(conn: Conn, user: str) -> datetime:
    """The account's current period end, as the database stores it."""
    value: datetime = one(conn, "SELECT period_ends_at FROM user_credits WHERE user_id = %s",
                          (user,))
    return value


def test_a_renewing_members_balance_says_when_and_what(conn: Conn) -> None:
    renew_monthly(conn)
    [user] = add_users(conn, "member")
    result = credits_db.balance(conn, user)
    assert result.own is not None
    expected = Renewal(renews_at=period_end(conn, user), credits=350, rollover_cap=100)
    assert result.own.next_renewal == result.next_renewal == expected
    assert isinstance(result.own.next_renewal, Renewal)
    assert result.own.next_renewal.renews_at.utcoffset() is not None
    assert result.team_pool_next_renewal is None  # in no pool


def test_no_renewal_for_a_role_that_gives_once_or_without_an_account(conn: Conn) -> None:
    [once] = add_users(conn, "member")  # every seeded role gives its allocation once
    result = credits_db.balance(conn, once)
    assert result.own is not None
    assert (result.own.next_renewal, result.next_renewal, result.team_pool_next_renewal) == (
        None, None, None)
    renew_monthly(conn)
    [waiting] = add_users_without_credits(conn, "member")
    nothing = credits_db.balance(conn, waiting)
    assert (nothing.own, nothing.next_renewal) == (None, None)


def test_the_team_pool_renews_with_its_admins_role(conn: Conn) -> None:
    renew_monthly(conn, "team_admin", cap=0)
    admin, member = add_users(conn, "team_admin", "member")
    credits_db.add_team_member(conn, admin, member)
    seen = credits_db.balance(conn, member)
    # The member's own role (member) gives once; the pool is the admin's account.
    assert seen.next_renewal is None
    assert seen.team_pool_next_renewal == Renewal(period_end(conn, admin), 5000, 0)
    alone = credits_db.balance(conn, admin)
    assert alone.next_renewal == Renewal(period_end(conn, admin), 5000, 0)
    assert alone.team_pool_next_renewal is None  # an admin is in no pool of their own


def test_the_overview_has_the_next_renewal_own_and_pool(conn: Conn) -> None:
    renew_monthly(conn)
    renew_monthly(conn, "team_admin", cap=250)
    admin, member = add_users(conn, "team_admin", "member")
    credits_db.add_team_member(conn, admin, member)
    overview = credits_db.overview(conn, member)
    own = Renewal(period_end(conn, member), 350, 100)
    pool = Renewal(period_end(conn, admin), 5000, 250)
    assert (overview.next_renewal, overview.team_pool_next_renewal) == (own, pool)
    assert (overview.balance.next_renewal, overview.balance.team_pool_next_renewal) == (
        own, pool)
    explained = credits_db.explain_user(conn, member)
    assert explained.overview.next_renewal == own


def test_the_renewal_moves_on_after_renew(conn: Conn) -> None:
    renew_monthly(conn)
    [user] = add_users(conn, "member")
    first = credits_db.balance(conn, user).next_renewal
    assert first is not None
    credits_db.renew(conn, as_of=first.renews_at + timedelta(days=1))
    after = credits_db.balance(conn, user).next_renewal
    assert after is not None and after.renews_at == period_end(conn, user) > first.renews_at
    assert (after.credits, after.rollover_cap) == (350, 100)


def test_a_role_change_of_its_allowance_shows_the_new_roles(conn: Conn) -> None:
    renew_monthly(conn)
    renew_monthly(conn, "team_admin", cap=7)
    [user] = add_users(conn, "member")
    conn.execute("UPDATE users SET role = 'team_admin' WHERE id = %s", (user,))
    assert credits_db.balance(conn, user).next_renewal == Renewal(period_end(conn, user),
                                                                  5000, 7)


@pytest.mark.parametrize("data", [
    {"renews_at": "2030-01-31T00:00:00+00:00", "credits": 350, "rollover_cap": 0},
    None,
])
def test_renewal_from_json(data: dict[str, Any] | None) -> None:
    parsed = Renewal.from_json(data)
    if data is None:
        assert parsed is None
    else:
        assert parsed == Renewal(datetime.fromisoformat(data["renews_at"]), 350, 0)


def test_a_balance_without_the_renewal_keys_parses_as_none() -> None:
    # What get_credit_balance() answered before revision 0011: no next_renewal keys.
    parsed = Balance.from_json({
        "user_id": "00000000-0000-0000-0000-000000000001",
        "own": {"total_credits": 1, "used_credits": 0, "remaining_credits": 1,
                "spendable_credits": 1, "next_expiry": None},
        "team_admin_id": None, "team_pool_remaining": None, "team_pool_spendable": None,
        "team_pool_next_expiry": None, "spendable": 1})
    assert (parsed.next_renewal, parsed.team_pool_next_renewal) == (None, None)


def test_the_async_api_has_the_renewal_too(db: Database, conn: Conn) -> None:
    renew_monthly(conn)
    renew_monthly(conn, "team_admin", cap=0)
    admin, member = add_users(conn, "team_admin", "member")
    credits_db.add_team_member(conn, admin, member)

    async def main() -> tuple[Any, ...]:
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as aconn:
            return await aio.balance(aconn, member), await aio.overview(aconn, member)

    balance, overview = asyncio.run(main())
    own, pool = Renewal(period_end(conn, member), 350, 100), Renewal(period_end(conn, admin),
                                                                     5000, 0)
    assert (balance.next_renewal, balance.team_pool_next_renewal) == (own, pool)
    assert (overview.next_renewal, overview.team_pool_next_renewal) == (own, pool)
    assert balance == credits_db.balance(conn, member)


def test_exported() -> None:
    assert "Renewal" in credits_db.__all__ and credits_db.Renewal is Renewal
    assert Renewal.__doc__ and Renewal.from_json.__doc__
