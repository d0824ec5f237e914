"""Credit lots and expiry through the Python API, sync and async: grants with an
expiry and a priority, lots(), the balance's spendable and next expiry, the
overview's expiring lots, expire() and the batched expire_all()."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

import credits_db
from credits_db import aio
from credits_db.models import CreditLot, Expiry, ExpirySummary
from tests.python.test_acting_as import user_url
from tests.support import pgbouncer
from tests.support.databases import Database, Server
from tests.support.helpers import Conn, add_users, balance


@pytest.fixture(scope="module")
def user_login(server: Server, installed_template: Database) -> Iterator[pgbouncer.Login]:
    """A login that is a member of credits_user, as an application's request login."""
    with pgbouncer.login_role(server.admin_url) as login:
        yield login


@pytest.fixture
def user_conn(db: Database, user_login: pgbouncer.Login) -> Iterator[Conn]:
    """An autocommit connection of the credits_user login."""
    with psycopg.connect(user_url(db, user_login), autocommit=True) as connection:
        yield connection


def soon(days: float) -> datetime:
    """A time ``days`` from now, in UTC."""
    return datetime.now(UTC) + timedelta(days=days)


def lapse(conn: Conn, lot_id: int) -> None:
    """Make a lot's expiry pass now, as the owner (debits judge by statement_timestamp())."""
    conn.execute("UPDATE credit_lots SET expires_at = now() - interval '1 second' WHERE id = %s",
                 (lot_id,))


def lot_of(conn: Conn, user: str, log_id: int) -> CreditLot:
    """The lot a grant (its ledger entry ``log_id``) created."""
    [lot] = [lot for lot in credits_db.lots(conn, user) if lot.log_id == log_id]
    return lot


def expire_entries(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM credit_usage_log WHERE type = 'expire'").fetchone()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------- grant and lots


def test_a_grant_with_expiry_and_priority_is_a_lot_in_spending_order(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    in_ten, in_sixty = soon(10), soon(60)
    first = credits_db.grant(conn, user, 100, expires_at=in_ten, priority=10, source="promo")
    later = credits_db.grant(conn, user, 50, expires_at=in_sixty)
    lots = credits_db.lots(conn, user)
    # Priority first, then the soonest expiry (none last): the signup lot comes last.
    assert [(lot.log_id, lot.source, lot.amount, lot.remaining, lot.expires_at, lot.priority,
             lot.state) for lot in lots] == [
        (first.log_id, "promo", 100, 100, in_ten, 10, "open"),
        (later.log_id, "admin_grant", 50, 50, in_sixty, 50, "open"),
        (lots[2].log_id, "signup", 350, 350, None, 50, "open"),
    ]
    assert all(isinstance(lot, CreditLot) for lot in lots)
    assert (lots[0].taken, lots[0].expired) == (0, 0)
    balance_now = credits_db.balance(conn, user)
    assert balance_now.own is not None and balance_now.own.spendable_credits == 500
    assert balance_now.next_expiry == balance_now.own.next_expiry == Expiry(in_ten, 100)


def test_a_grant_without_expiry_has_no_next_expiry(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    credits_db.grant(conn, user, 10)
    result = credits_db.balance(conn, user)
    assert result.own is not None
    assert (result.own.spendable_credits, result.next_expiry) == (360, None)
    assert [lot.expires_at for lot in credits_db.lots(conn, user)] == [None, None]


def test_a_keyed_grant_replays_only_with_the_same_expiry(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    when = soon(5)
    first = credits_db.grant(conn, user, 10, expires_at=when, idempotency_key="k")
    again = credits_db.grant(conn, user, 10, expires_at=when, idempotency_key="k")
    assert again.replayed and again.log_id == first.log_id
    with pytest.raises(credits_db.IdempotencyConflict):
        credits_db.grant(conn, user, 10, expires_at=soon(6), idempotency_key="k")
    with pytest.raises(credits_db.IdempotencyConflict):
        credits_db.grant(conn, user, 10, expires_at=when, priority=1, idempotency_key="k")


@pytest.mark.parametrize("call", [
    lambda c, u: credits_db.grant(c, u, 10, expires_at=datetime(2030, 1, 1)),
    lambda c, u: credits_db.expire(c, as_of=datetime(2030, 1, 1)),
    lambda c, u: credits_db.expire_all(c, as_of=datetime(2030, 1, 1)),
])
def test_a_naive_datetime_is_refused_before_anything_is_sent(db: Database, conn: Conn,
                                                             call: Any) -> None:
    [user] = add_users(conn, "member")
    closed = db.connect()
    closed.close()  # anything sent on it would be ConnectionLost, not InvalidArgument
    with pytest.raises(credits_db.InvalidArgument, match="timezone-aware") as caught:
        call(closed, user)
    assert caught.value.field in ("expires_at", "as_of")
    with pytest.raises(credits_db.InvalidArgument) as on_open:
        call(conn, user)
    assert on_open.value.field == caught.value.field
    assert balance(conn, user) == (350, 0, 350)


def test_the_databases_refusals_name_the_argument(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    with pytest.raises(credits_db.InvalidArgument) as past:
        credits_db.grant(conn, user, 10, expires_at=soon(-1))
    assert (past.value.field, past.value.sqlstate_received) == ("expires_at", "22023")
    with pytest.raises(credits_db.InvalidArgument) as priority:
        credits_db.grant(conn, user, 10, priority=101)
    assert priority.value.field == "priority"
    with pytest.raises(credits_db.InvalidArgument, match="priority"):
        credits_db.grant(conn, user, 10, priority=2**31)  # not even an integer: never sent
    with pytest.raises(credits_db.InvalidArgument) as limit:
        credits_db.expire(conn, limit=0)
    assert limit.value.field == "limit"
    assert balance(conn, user) == (350, 0, 350)


def test_lots_of_an_unknown_user_and_of_a_user_without_an_account(conn: Conn) -> None:
    with pytest.raises(credits_db.UnknownUser):
        credits_db.lots(conn, uuid.uuid4())
    conn.execute("ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
    [waiting] = add_users(conn, "member")
    assert credits_db.lots(conn, waiting) == []


# --------------------------------------------------------------------------- lapsed lots


def test_a_lapsed_lot_is_not_spendable_and_the_next_expiry_moves_on(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    in_ten, in_sixty = soon(10), soon(60)
    first = credits_db.grant(conn, user, 100, expires_at=in_ten)
    credits_db.grant(conn, user, 50, expires_at=in_sixty)
    lot = lot_of(conn, user, first.log_id)
    lapse(conn, lot.lot_id)

    now = credits_db.balance(conn, user)
    assert now.own is not None
    assert (now.own.remaining_credits, now.own.spendable_credits, now.spendable) == (500, 400, 400)
    assert now.next_expiry == Expiry(in_sixty, 50)
    assert lot_of(conn, user, first.log_id).state == "lapsed"
    with pytest.raises(credits_db.InsufficientCredits):
        credits_db.debit(conn, user, 401)

    swept = credits_db.expire(conn)
    assert (swept.lots_expired, swept.credits_expired, swept.accounts,
            swept.accounts_skipped) == (1, 100, 1, 0)
    assert isinstance(swept, ExpirySummary) and swept.as_of.utcoffset() is not None
    assert balance(conn, user) == (500, 100, 400)
    expired = lot_of(conn, user, first.log_id)
    assert (expired.state, expired.remaining, expired.expired) == ("expired", 0, 100)
    [entry, *_] = credits_db.history(conn, user)
    assert (entry.type, entry.amount, entry.source, entry.lot_id) == (
        "expire", -100, "expiry", lot.lot_id)
    assert all(e.lot_id is None for e in credits_db.history(conn, user)[1:])
    assert credits_db.expire(conn).lots_expired == 0  # idempotent
    assert credits_db.verify(conn) == []


def test_the_team_pools_spendable_and_next_expiry(conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    credits_db.add_team_member(conn, admin, member)
    in_three = soon(3)
    pool_grant = credits_db.grant(conn, admin, 1000, expires_at=in_three)
    seen = credits_db.balance(conn, member)
    assert (seen.team_pool_remaining, seen.team_pool_spendable) == (6000, 6000)
    assert seen.team_pool_next_expiry == Expiry(in_three, 1000)
    assert seen.next_expiry is None  # the member's own account expires nothing
    lapse(conn, lot_of(conn, admin, pool_grant.log_id).lot_id)
    seen = credits_db.balance(conn, member)
    assert (seen.team_pool_remaining, seen.team_pool_spendable, seen.spendable) == (
        6000, 5000, 5000)
    assert seen.team_pool_next_expiry is None
    alone = credits_db.balance(conn, admin)
    assert (alone.team_pool_spendable, alone.team_pool_next_expiry) == (None, None)


def test_the_overview_lists_the_lots_expiring_within_30_days(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    in_two, in_twenty = soon(2), soon(20)
    late = credits_db.grant(conn, user, 30, expires_at=in_twenty)
    early = credits_db.grant(conn, user, 20, expires_at=in_two, priority=90)
    credits_db.grant(conn, user, 40, expires_at=soon(45))  # beyond the window
    gone = credits_db.grant(conn, user, 10, expires_at=soon(1))
    lapse(conn, lot_of(conn, user, gone.log_id).lot_id)  # lapsed: no longer "expiring"
    overview = credits_db.overview(conn, user)
    assert [(lot.log_id, lot.remaining, lot.expires_at, lot.state)
            for lot in overview.expiring_lots] == [
        (early.log_id, 20, in_two, "open"), (late.log_id, 30, in_twenty, "open")]
    assert overview.expiring_lots == [lot_of(conn, user, early.log_id),
                                      lot_of(conn, user, late.log_id)]
    assert overview.balance.next_expiry == Expiry(in_two, 20)
    explained = credits_db.explain_user(conn, user)
    assert explained.overview.expiring_lots == overview.expiring_lots


def test_the_overview_lists_at_most_ten_expiring_lots(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    grants = [credits_db.grant(conn, user, 1, expires_at=soon(1 + n)) for n in range(12)]
    listed = credits_db.overview(conn, user).expiring_lots
    assert [lot.log_id for lot in listed] == [g.log_id for g in grants[:10]]


def test_a_credits_user_reads_its_own_lots_and_overview_only(conn: Conn,
                                                             user_conn: Conn) -> None:
    alice, bob = add_users(conn, "member", "member")
    granted = credits_db.grant(conn, alice, 5, expires_at=soon(7))
    with credits_db.acting_as(user_conn, alice):
        assert credits_db.lots(user_conn, alice)[0].log_id == granted.log_id
        # The overview reads credit_lots under its row level security: alice's own.
        [lot] = credits_db.overview(user_conn, alice).expiring_lots
        assert lot.log_id == granted.log_id
    with pytest.raises(credits_db.PermissionDenied), credits_db.acting_as(user_conn, alice):
        credits_db.lots(user_conn, bob)
    with pytest.raises(credits_db.PermissionDenied), credits_db.acting_as(user_conn, alice):
        credits_db.expire(user_conn)


# --------------------------------------------------------------------------- expire


def test_expire_takes_as_of_and_limit(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    for days in (1, 2, 3):
        credits_db.grant(conn, user, days, expires_at=soon(days))
    assert credits_db.expire(conn).lots_expired == 0  # nothing has lapsed yet
    as_of = soon(2.5)
    one = credits_db.expire(conn, as_of=as_of, limit=1)
    assert (one.lots_expired, one.credits_expired, one.as_of) == (1, 1, as_of)
    rest = credits_db.expire(conn, as_of=as_of)
    assert (rest.lots_expired, rest.credits_expired) == (1, 2)
    assert [lot.state for lot in credits_db.lots(conn, user)][:3] == ["expired", "expired",
                                                                     "open"]


class Watch:
    """``on_batch``: each call's count, and the expire entries another connection sees."""

    def __init__(self, observer: Conn) -> None:
        self.observer = observer
        self.calls: list[int] = []
        self.committed: list[int] = []

    def __call__(self, expired: int) -> None:
        self.calls.append(expired)
        self.committed.append(expire_entries(self.observer))


def _five_lapsed_lots(conn: Conn) -> tuple[list[str], int]:
    """Two accounts, five lapsed lots: (users, credits they hold)."""
    users = add_users(conn, "member", "admin")
    credits = 0
    for n, user in enumerate([users[0]] * 3 + [users[1]] * 2):
        granted = credits_db.grant(conn, user, 10 + n, expires_at=soon(1 + n))
        lapse(conn, lot_of(conn, user, granted.log_id).lot_id)
        credits += 10 + n
    return users, credits


@pytest.mark.parametrize("autocommit", [True, False])
def test_expire_all_sums_its_batches_each_committed(db: Database, conn: Conn,
                                                    autocommit: bool) -> None:
    users, credits = _five_lapsed_lots(conn)
    watch = Watch(conn)
    with db.connect(autocommit=autocommit) as target:
        summary = credits_db.expire_all(target, batch_size=2, on_batch=watch)
        assert target.info.transaction_status == TransactionStatus.IDLE
    assert watch.calls == [2, 2, 1, 0]  # per batch, then the call that expired nothing
    assert watch.committed == [2, 4, 5, 5]  # each batch visible before the next began
    assert (summary.lots_expired, summary.credits_expired, summary.accounts_skipped) == (
        5, credits, 0)
    assert summary.accounts >= 2  # an account whose lots fall in two batches counts twice
    assert [balance(conn, user) for user in users] == [(383, 33, 350), (1027, 27, 1000)]
    assert credits_db.expire_all(conn).lots_expired == 0


def test_expire_all_keeps_the_first_calls_time(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    for days in (1, 2, 3):
        credits_db.grant(conn, user, 1, expires_at=soon(days))
    as_of = soon(2.5)
    summary = credits_db.expire_all(conn, as_of=as_of, batch_size=1)
    assert (summary.lots_expired, summary.as_of) == (2, as_of)


def test_expire_all_without_as_of_expires_as_of_its_first_call(conn: Conn) -> None:
    _five_lapsed_lots(conn)
    summary = credits_db.expire_all(conn, batch_size=2)
    row = conn.execute("SELECT min(created_at), max(created_at) FROM credit_usage_log"
                       " WHERE type = 'expire'").fetchone()
    assert row is not None
    first, last = row
    # Each call is a transaction of its own, whose now() the first batch's entries carry:
    # the walk kept that time for every later call (and the empty last one).
    assert first < last
    assert summary.as_of == first


def test_busy_accounts_are_skipped_and_left_for_the_next_run(db: Database, conn: Conn) -> None:
    (busy, idle), _credits = _five_lapsed_lots(conn)
    with db.connect(autocommit=False) as holder:
        # As a debit of that account holds it: the sweep skips it, never waits.
        holder.execute("SELECT 1 FROM user_credits WHERE user_id = %s FOR UPDATE", (busy,))
        # Its lot came first: skipped before the limit applies, so the batch still moves.
        single = credits_db.expire(conn, limit=1)
        assert (single.lots_expired, single.accounts_skipped) == (1, 1)
        summary = credits_db.expire_all(conn, batch_size=10)
        holder.rollback()
    # Two calls each skipped the busy account: the walk reports it once, as its last call did.
    assert (single.lots_expired + summary.lots_expired,
            single.credits_expired + summary.credits_expired, summary.accounts,
            summary.accounts_skipped) == (2, 27, 1, 1)
    assert balance(conn, idle) == (1027, 27, 1000)
    rest = credits_db.expire_all(conn, batch_size=10)
    assert (rest.lots_expired, rest.credits_expired, rest.accounts_skipped) == (3, 33, 0)


def test_expire_all_refuses_a_connection_inside_a_transaction(db: Database, conn: Conn) -> None:
    _five_lapsed_lots(conn)
    with db.connect(autocommit=False) as inside:
        inside.execute("SELECT 1")
        with pytest.raises(credits_db.InvalidArgument, match=r"expire_all .* use expire\(\)"):
            credits_db.expire_all(inside, on_batch=lambda _n: pytest.fail("sent"))
    with pytest.raises(credits_db.InvalidArgument, match="batch_size"):
        credits_db.expire_all(conn, batch_size=0)
    assert expire_entries(conn) == 0


def test_a_failure_keeps_the_batches_before_it(conn: Conn) -> None:
    _five_lapsed_lots(conn)

    def stop(_expired: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        credits_db.expire_all(conn, batch_size=2, on_batch=stop)
    assert expire_entries(conn) == 2
    assert credits_db.expire_all(conn, batch_size=2).lots_expired == 3


# --------------------------------------------------------------------------- async


def test_the_async_api_has_the_same_calls(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")
    others, credits = _five_lapsed_lots(conn)
    when = soon(4)
    watch = Watch(conn)

    async def main() -> tuple[Any, ...]:
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as aconn:
            granted = await aio.grant(aconn, user, 70, expires_at=when, priority=5)
            lots = await aio.lots(aconn, user)
            current = await aio.balance(aconn, user)
            with pytest.raises(credits_db.InvalidArgument) as naive:
                await aio.grant(aconn, user, 1, expires_at=when.replace(tzinfo=None))
            one = await aio.expire(aconn, limit=1)
            rest = await aio.expire_all(aconn, batch_size=2, on_batch=watch)
            overview = await aio.overview(aconn, user)
        return granted, lots, current, naive.value, one, rest, overview

    granted, lots, current, naive, one, rest, overview = asyncio.run(main())
    assert (lots[0].log_id, lots[0].expires_at, lots[0].priority) == (granted.log_id, when, 5)
    assert current.next_expiry == Expiry(when, 70)
    assert naive.field == "expires_at"
    assert one.lots_expired == 1
    assert watch.calls == [2, 2, 0]
    assert (rest.lots_expired, one.credits_expired + rest.credits_expired) == (4, credits)
    assert [lot.log_id for lot in overview.expiring_lots] == [granted.log_id]
    assert balance(conn, others[0]) == (383, 33, 350)


def test_async_expire_all_refuses_a_connection_inside_a_transaction(db: Database) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(db.url) as aconn:
            await aconn.execute("SELECT 1")
            with pytest.raises(credits_db.InvalidArgument, match="expire_all"):
                await aio.expire_all(aconn)

    asyncio.run(main())


def test_exported() -> None:
    for name in ("lots", "expire", "expire_all", "CreditLot", "Expiry", "ExpirySummary"):
        assert name in credits_db.__all__
    for name in ("lots", "expire", "expire_all", "grant"):
        assert getattr(credits_db, name).__doc__ and getattr(aio, name).__doc__
