"""credits_db.renew / renew_all and their async twins: renew_allowances() from Python, one
call or in committed batches (revision 0011's renewal by role)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.pq import TransactionStatus

import credits_db
from credits_db import _renewal, aio, urls
from credits_db.models import RenewalSummary
from tests.support.databases import Database, Server
from tests.support.helpers import Conn, add_users
from tests.support.security import one

MEMBERS = 5


def renewing_members(conn: Conn, count: int = MEMBERS, cap: int = 0) -> list[str]:
    """``count`` members whose role renews monthly (each holds its 350 signup credits)."""
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month', rollover_cap = %s"
                 " WHERE role = 'member'", (cap,))
    return add_users(conn, *["member"] * count)


def next_period(conn: Conn) -> datetime:
    """A time after every new account's first period: now() + 1 month 1 day."""
    return one(conn, "SELECT now() + interval '1 month 1 day'")  # type: ignore[no-any-return]


def renewed(conn: Conn) -> int:
    """Accounts given a renewal allowance so far (committed)."""
    return int(one(conn, "SELECT count(DISTINCT user_id) FROM credit_usage_log"
                         " WHERE source = 'renewal'"))


def totals(conn: Conn, users: list[str]) -> list[int]:
    rows = conn.execute("SELECT total_credits FROM user_credits WHERE user_id = ANY(%s::uuid[])"
                        " ORDER BY user_id", (users,)).fetchall()
    return [row[0] for row in rows]


@contextmanager
def holding(db: Database, user: str) -> Iterator[None]:
    """Another transaction holds ``user``'s account (as a debit does) until the block ends."""
    with db.connect(autocommit=False) as holder:
        holder.execute("SELECT 1 FROM user_credits WHERE user_id = %s FOR NO KEY UPDATE", (user,))
        yield
        holder.rollback()


def test_exported_and_documented() -> None:
    for name in ("renew", "renew_all", "RenewalSummary"):
        assert name in credits_db.__all__
    for function in (credits_db.renew, credits_db.renew_all, aio.renew, aio.renew_all):
        assert function.__doc__


def test_renew_gives_each_due_account_its_allowance_once(conn: Conn) -> None:
    users = renewing_members(conn, cap=100)
    credits_db.debit(conn, users[0], 300)  # 50 left: all of it rolls over
    as_of = next_period(conn)
    summary = credits_db.renew(conn, as_of=as_of)
    assert summary == RenewalSummary(
        accounts_renewed=MEMBERS, credits_renewed=350 * MEMBERS,
        credits_rolled_over=50 + 100 * (MEMBERS - 1),
        credits_expired=50 + 350 * (MEMBERS - 1), accounts_skipped=0, as_of=as_of)
    assert credits_db.renew(conn, as_of=as_of) == replace(
        summary, accounts_renewed=0, credits_renewed=0, credits_rolled_over=0,
        credits_expired=0)  # idempotent per period
    assert credits_db.verify(conn) == []


def test_renew_without_as_of_is_now_and_nothing_is_due_yet(conn: Conn) -> None:
    renewing_members(conn)
    with conn.transaction():
        summary = credits_db.renew(conn)
        now = one(conn, "SELECT now()")
    assert (summary.accounts_renewed, summary.as_of) == (0, now)


def test_renew_limit_renews_that_many_and_joins_the_callers_transaction(
        db: Database, conn: Conn) -> None:
    renewing_members(conn)
    as_of = next_period(conn)
    with db.connect(autocommit=False) as caller:
        assert credits_db.renew(caller, as_of=as_of, limit=2).accounts_renewed == 2
        assert caller.info.transaction_status == TransactionStatus.INTRANS
        assert renewed(conn) == 0  # not committed: the caller's transaction
        caller.commit()
    assert renewed(conn) == 2
    assert credits_db.renew(conn, as_of=as_of).accounts_renewed == MEMBERS - 2


def test_bad_arguments(conn: Conn) -> None:
    renewing_members(conn, 1)
    with pytest.raises(credits_db.InvalidArgument, match="timezone-aware"):
        credits_db.renew(conn, as_of=datetime(2030, 1, 1))  # naive on purpose
    with pytest.raises(credits_db.InvalidArgument, match="p_limit"):
        credits_db.renew(conn, as_of=next_period(conn), limit=0)
    with pytest.raises(credits_db.InvalidArgument, match="integer range"):
        credits_db.renew(conn, limit=2**31)
    for size in (0, 2**31):
        with pytest.raises(credits_db.InvalidArgument, match="batch_size"):
            credits_db.renew_all(conn, batch_size=size)
    assert renewed(conn) == 0


class Watch:
    """``on_batch``: each call's count, and what another connection saw committed then."""

    def __init__(self, observer: Conn) -> None:
        self.observer = observer
        self.calls: list[int] = []
        self.committed: list[int] = []

    def __call__(self, count: int) -> None:
        self.calls.append(count)
        self.committed.append(renewed(self.observer))


@contextmanager
def _psycopg(db: Database, autocommit: bool) -> Iterator[Any]:
    with db.connect(autocommit=autocommit) as conn:
        yield conn
        assert conn.info.transaction_status == TransactionStatus.IDLE


@contextmanager
def _sqlalchemy(db: Database, connect: bool) -> Iterator[Any]:
    engine = sa.create_engine(urls.to_sqlalchemy(db.url))
    try:
        if not connect:
            yield engine
            return
        with engine.connect() as connection:
            yield connection
            assert not connection.in_transaction()
    finally:
        engine.dispose()


CONNECTIONS: dict[str, Callable[[Database], AbstractContextManager[Any]]] = {
    "psycopg autocommit": lambda db: _psycopg(db, True),
    "psycopg not autocommit": lambda db: _psycopg(db, False),
    "SQLAlchemy Engine": lambda db: _sqlalchemy(db, False),
    "SQLAlchemy Connection": lambda db: _sqlalchemy(db, True),
}


@pytest.mark.parametrize("kind", CONNECTIONS)
def test_renew_all_commits_each_batch_and_sums_them(db: Database, conn: Conn,
                                                    kind: str) -> None:
    users = renewing_members(conn)
    as_of = next_period(conn)
    watch = Watch(conn)
    with CONNECTIONS[kind](db) as target:
        summary = credits_db.renew_all(target, as_of=as_of, batch_size=2, on_batch=watch)
    # 5 accounts by 2: three batches, then the call that renews nothing ends the run.
    assert watch.calls == [2, 2, 1, 0]
    assert watch.committed == [2, 4, 5, 5]  # each batch visible before the next began
    assert summary == RenewalSummary(MEMBERS, 350 * MEMBERS, 0, 350 * MEMBERS, 0, as_of)
    assert totals(conn, users) == [700] * MEMBERS
    assert credits_db.verify(conn) == []


def test_renew_all_is_what_one_renew_does(server: Server, db: Database) -> None:
    with db.connect() as conn:
        users = renewing_members(conn, 7, cap=200)
        for i, user in enumerate(users):
            credits_db.debit(conn, user, 40 * (i + 1))
        as_of = next_period(conn)
    twin = server.create(template=db.name)  # the same accounts, renewed in one call
    try:
        with twin.connect() as conn:
            once = credits_db.renew(conn, as_of=as_of)
        with db.connect() as conn:
            assert credits_db.renew_all(conn, as_of=as_of, batch_size=3) == once
            assert credits_db.renew_all(conn, as_of=as_of).accounts_renewed == 0
    finally:
        server.drop(twin)


def test_every_batch_is_judged_at_the_first_calls_now(conn: Conn) -> None:
    renewing_members(conn, 3)
    conn.execute("UPDATE user_credits SET period_ends_at = now() - interval '1 day'")
    walk = _renewal.RenewalWalk(2)
    first = walk.next_batch()
    assert first is not None and first.params["as_of"] is None  # the server's now()
    batch = credits_db.renew(conn, limit=2)
    walk.add_batch(batch)
    following = walk.next_batch()
    assert following is not None and following.params["as_of"] == batch.as_of
    summary = credits_db.renew_all(conn, batch_size=2)
    assert summary.accounts_renewed == 1 and summary.as_of > batch.as_of


def test_a_busy_account_is_skipped_and_reported_and_the_run_still_ends(
        db: Database, conn: Conn) -> None:
    users = sorted(renewing_members(conn))
    as_of = next_period(conn)
    busy = users[0]  # first in the renewal's order: same period end, lowest id
    watch = Watch(conn)
    with holding(db, busy):
        summary = credits_db.renew_all(conn, as_of=as_of, batch_size=1, on_batch=watch)
    # The busy account comes first, but the renewal skips it before its limit
    # applies: every call renews another account, and the run ends on a call that
    # renewed nothing.
    assert watch.calls == [1] * (MEMBERS - 1) + [0]
    assert (summary.accounts_renewed, summary.accounts_skipped) == (MEMBERS - 1, 1)
    assert totals(conn, [busy]) == [350]
    rerun = credits_db.renew_all(conn, as_of=as_of, batch_size=1)  # released: renewed now
    assert (rerun.accounts_renewed, rerun.accounts_skipped) == (1, 0)
    assert totals(conn, users) == [700] * MEMBERS


def test_renew_all_refuses_a_connection_inside_a_transaction(db: Database, conn: Conn) -> None:
    renewing_members(conn, 1)
    with db.connect(autocommit=False) as inside:
        inside.execute("SELECT 1")
        with pytest.raises(credits_db.InvalidArgument, match="outside any transaction"):
            credits_db.renew_all(inside, as_of=next_period(conn),
                                 on_batch=lambda _n: pytest.fail("sent"))
        assert inside.info.transaction_status == TransactionStatus.INTRANS
    assert renewed(conn) == 0


def test_a_failing_on_batch_keeps_the_batches_before_it(db: Database, conn: Conn) -> None:
    renewing_members(conn)
    as_of = next_period(conn)

    def stop(_count: int) -> None:
        raise KeyboardInterrupt

    with db.connect(autocommit=False) as target:
        with pytest.raises(KeyboardInterrupt):
            credits_db.renew_all(target, as_of=as_of, batch_size=2, on_batch=stop)
        assert target.info.transaction_status == TransactionStatus.IDLE
    assert renewed(conn) == 2
    assert credits_db.renew_all(conn, as_of=as_of, batch_size=2).accounts_renewed == MEMBERS - 2


# --- async -------------------------------------------------------------------------------------


async def _async_renewals(db: Database, as_of: datetime) -> tuple[RenewalSummary, ...]:
    async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as conn:
        one_call = await aio.renew(conn, as_of=as_of, limit=1)
        calls: list[int] = []
        rest = await aio.renew_all(conn, as_of=as_of, batch_size=2, on_batch=calls.append)
        assert calls == [2, 2, 0]
        again = await aio.renew(conn, as_of=as_of)
    async with await psycopg.AsyncConnection.connect(db.url) as inside:
        await inside.execute("SELECT 1")
        with pytest.raises(credits_db.InvalidArgument, match="outside any transaction"):
            await aio.renew_all(inside, as_of=as_of)
    async with await psycopg.AsyncConnection.connect(db.url) as not_autocommit:
        later = await aio.renew_all(not_autocommit, as_of=as_of + timedelta(days=31))
        assert not_autocommit.info.transaction_status == TransactionStatus.IDLE
    return one_call, rest, again, later


def test_async_renew_and_renew_all(db: Database, conn: Conn) -> None:
    users = renewing_members(conn)
    as_of = next_period(conn)
    one_call, rest, again, later = asyncio.run(_async_renewals(db, as_of))
    assert one_call == RenewalSummary(1, 350, 0, 350, 0, as_of)
    assert rest == RenewalSummary(MEMBERS - 1, 350 * (MEMBERS - 1), 0, 350 * (MEMBERS - 1), 0,
                                  as_of)
    assert again.accounts_renewed == 0
    assert later.accounts_renewed == MEMBERS  # the period after, one more allowance each
    assert totals(conn, users) == [1050] * MEMBERS
    assert credits_db.verify(conn) == []
