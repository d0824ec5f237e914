"""credits_db.backfill_all and aio.backfill_all: the batched walk, one committed transaction a batch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.pq import TransactionStatus

import credits_db
from credits_db import _calls, aio, urls
from credits_db.models import BackfillBatch, BackfillSummary, RoleAllocation
from tests.support.databases import Database, Server
from tests.support.faults import killed_at_commit
from tests.support.helpers import Conn, add_users, add_users_without_credits, ledger_mismatches

ROLES = ("member", "admin", None, "team_admin", "Boss", "member", "super_admin")
CREDITS = 350 + 1000 + 350 + 5000 + 350 + 350 + 10000


def _allocated(observer: Conn) -> int:
    row = observer.execute("SELECT count(*) FROM user_credits").fetchone()
    assert row is not None
    return int(row[0])


class Watch:
    """``on_batch``: records each call's count and what another connection sees committed."""

    def __init__(self, observer: Conn, already: int) -> None:
        self.observer, self.already = observer, already
        self.calls: list[int] = []
        self.committed: list[int] = []

    def __call__(self, allocated: int) -> None:
        self.calls.append(allocated)
        self.committed.append(_allocated(self.observer) - self.already)

    def check(self, summary: BackfillSummary) -> None:
        # Every batch was visible to another connection before the next one began.
        running = [sum(self.calls[:i + 1]) for i in range(len(self.calls))]
        assert self.committed == running
        assert summary.users_backfilled == sum(self.calls) == len(ROLES)


@contextmanager
def _psycopg(db: Database, autocommit: bool) -> Iterator[Any]:
    with db.connect(autocommit=autocommit) as conn:
        yield conn
        assert conn.info.transaction_status == TransactionStatus.IDLE


@contextmanager
def _engine(db: Database, connect: bool, **options: Any) -> Iterator[Any]:
    engine = sa.create_engine(urls.to_sqlalchemy(db.url), **options)
    try:
        if not connect:
            yield engine
            return
        with engine.connect() as connection:
            yield connection
            assert not connection.in_transaction() or options
    finally:
        engine.dispose()


CONNECTIONS: dict[str, Callable[[Database], AbstractContextManager[Any]]] = {
    "psycopg autocommit": lambda db: _psycopg(db, True),
    "psycopg not autocommit": lambda db: _psycopg(db, False),
    "SQLAlchemy Engine": lambda db: _engine(db, False),
    "SQLAlchemy Connection": lambda db: _engine(db, True),
    "SQLAlchemy Connection AUTOCOMMIT": lambda db: _engine(db, True,
                                                           isolation_level="AUTOCOMMIT"),
}


@pytest.mark.parametrize("kind", CONNECTIONS)
def test_each_batch_commits_before_the_next(db: Database, conn: Conn, kind: str) -> None:
    add_users(conn, "admin")  # allocated at signup: scanned, left alone
    add_users_without_credits(conn, *ROLES)
    watch = Watch(conn, already=1)
    with CONNECTIONS[kind](db) as target:
        summary = credits_db.backfill_all(target, batch_size=3, on_batch=watch)
    watch.check(summary)
    # 8 users in windows of 3: three windows, the empty one that ends the walk, the final call.
    assert len(watch.calls) == 5 and watch.calls[-1] == 0
    assert summary == BackfillSummary(
        users_total=8, users_without_credits=7, users_backfilled=7, credits_allocated=CREDITS,
        fallback_role_users=2, dry_run=False, users_skipped=0,
        by_role={"(null)": RoleAllocation(1, 350), "Boss": RoleAllocation(1, 350),
                 "admin": RoleAllocation(1, 1000), "member": RoleAllocation(2, 700),
                 "super_admin": RoleAllocation(1, 10000), "team_admin": RoleAllocation(1, 5000)})
    assert ledger_mismatches(conn) == []


def test_the_summary_is_what_one_backfill_reports(server: Server, db: Database) -> None:
    with db.connect() as conn:
        add_users_without_credits(conn, *ROLES * 3)
    twin = server.create(template=db.name)  # the same users, to backfill in one call
    try:
        with twin.connect() as conn:
            once = credits_db.backfill(conn)
        with db.connect() as conn:
            assert credits_db.backfill_all(conn, batch_size=4) == once
            assert credits_db.backfill_all(conn).users_backfilled == 0
    finally:
        server.drop(twin)


def _open_transaction(conn: Conn) -> None:
    conn.execute("SELECT 1")  # not autocommit: the transaction is open now


def _failed_transaction(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1 / 0")


@pytest.mark.parametrize("state", [_open_transaction, _failed_transaction])
def test_a_connection_inside_a_transaction_is_refused(db: Database, conn: Conn,
                                                      state: Callable[[Conn], None]) -> None:
    add_users_without_credits(conn, "member")
    with db.connect(autocommit=False) as inside:
        state(inside)
        before = inside.info.transaction_status
        with pytest.raises(credits_db.InvalidArgument, match="outside any transaction"):
            credits_db.backfill_all(inside, on_batch=lambda _n: pytest.fail("sent"))
        assert inside.info.transaction_status == before  # nothing was sent
    assert _allocated(conn) == 0


def test_a_transaction_block_on_an_autocommit_connection_is_refused(conn: Conn) -> None:
    add_users_without_credits(conn, "member")
    with conn.transaction():
        conn.execute("INSERT INTO users (role) VALUES ('admin')")  # the caller's pending work
        with pytest.raises(credits_db.InvalidArgument):
            credits_db.backfill_all(conn)
        assert conn.info.transaction_status == TransactionStatus.INTRANS
    assert _allocated(conn) == 1  # the caller's own signup, committed by the caller


def test_a_sqlalchemy_connection_inside_a_transaction_is_refused(db: Database,
                                                                 conn: Conn) -> None:
    add_users_without_credits(conn, "member")
    with _engine(db, True) as connection:
        connection.exec_driver_sql("SELECT 1")  # autobegins
        with pytest.raises(credits_db.InvalidArgument):
            credits_db.backfill_all(connection)
        connection.rollback()
        assert credits_db.backfill_all(connection).users_backfilled == 1


@pytest.mark.parametrize("size", [0, -1, 2**31])
def test_batch_size_out_of_range_sends_nothing(conn: Conn, size: int) -> None:
    add_users_without_credits(conn, "member")
    with pytest.raises(credits_db.InvalidArgument, match="batch_size"):
        credits_db.backfill_all(conn, batch_size=size)
    assert _allocated(conn) == 0


@pytest.mark.parametrize("autocommit", [True, False])
def test_a_failure_keeps_the_batches_before_it_and_a_rerun_carries_on(
        db: Database, conn: Conn, autocommit: bool) -> None:
    add_users_without_credits(conn, *ROLES)

    def stop(_allocated: int) -> None:
        raise KeyboardInterrupt

    with db.connect(autocommit=autocommit) as target:
        with pytest.raises(KeyboardInterrupt):
            credits_db.backfill_all(target, batch_size=2, on_batch=stop)
        assert target.info.transaction_status == TransactionStatus.IDLE
        assert _allocated(conn) == 2  # the first window, committed before on_batch ran
        rest = credits_db.backfill_all(target, batch_size=2)
    assert rest.users_backfilled == len(ROLES) - 2
    assert ledger_mismatches(conn) == []


@pytest.mark.parametrize("kind", ["psycopg", "SQLAlchemy"])
def test_a_connection_killed_at_a_batchs_commit_is_outcome_unknown(db: Database, conn: Conn,
                                                                    kind: str) -> None:
    """Not in autocommit mode, COMMIT is a round trip of its own: lost there, nobody knows."""
    add_users_without_credits(conn, "member", "admin")
    engine = sa.create_engine(urls.to_sqlalchemy(db.url), poolclass=sa.NullPool)
    target: Any = engine.connect() if kind == "SQLAlchemy" else db.connect(autocommit=False)
    lost = killed_at_commit(conn, lambda: credits_db.backfill_all(target))
    target.close()
    engine.dispose()
    assert isinstance(lost, credits_db.ConnectionLost), repr(lost)
    assert lost.outcome_unknown is True
    assert _allocated(conn) == 0  # here it had not committed; the client cannot know that


@pytest.mark.parametrize("autocommit", [True, False])
def test_async_each_batch_commits_before_the_next(db: Database, conn: Conn,
                                                  autocommit: bool) -> None:
    add_users_without_credits(conn, *ROLES)
    watch = Watch(conn, already=0)

    async def main() -> BackfillSummary:
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=autocommit) as aconn:
            summary = await aio.backfill_all(aconn, batch_size=2, on_batch=watch)
            assert aconn.info.transaction_status == TransactionStatus.IDLE
            return summary

    summary = asyncio.run(main())
    watch.check(summary)
    assert (summary.credits_allocated, summary.users_without_credits) == (CREDITS, 7)


def test_async_inside_a_transaction_is_refused(db: Database, conn: Conn) -> None:
    add_users_without_credits(conn, "member")

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as aconn:
            async with aconn.transaction():
                with pytest.raises(credits_db.InvalidArgument):
                    await aio.backfill_all(aconn)
            with pytest.raises(credits_db.InvalidArgument):
                await aio.backfill_all(aconn, batch_size=0)

    asyncio.run(main())
    assert _allocated(conn) == 0


def _batch(users: int, skipped: int, last: uuid.UUID | None, **by_role: int
           ) -> BackfillBatch:
    return BackfillBatch(users_scanned=users + skipped, users_backfilled=users,
                         credits_allocated=350 * users, fallback_role_users=0,
                         by_role={r: RoleAllocation(n, 350 * n) for r, n in by_role.items()},
                         last_user_id=last, users_skipped=skipped)


def test_the_walk_sums_every_call() -> None:
    seen: list[int] = []
    walk = _calls.BackfillWalk(2, seen.append)
    cursor = uuid.uuid4()
    first = walk.next_batch()
    assert first is not None and first.params == {"after": None, "limit": 2}
    walk.add_batch(_batch(1, 1, cursor, member=1))
    second = walk.next_batch()
    assert second is not None and second.params["after"] == str(cursor)
    walk.add_batch(_batch(0, 0, None))
    assert walk.next_batch() is None
    assert walk.final_call().params == {"dry_run": False, "limit": None}
    summary = walk.finish(BackfillSummary(
        users_total=9, users_without_credits=2, users_backfilled=2, credits_allocated=700,
        fallback_role_users=1, by_role={"member": RoleAllocation(1, 350),
                                        "(null)": RoleAllocation(1, 350)},
        dry_run=False, users_skipped=2))
    assert seen == [1, 0, 2]
    assert summary == BackfillSummary(
        users_total=9, users_without_credits=3, users_backfilled=3, credits_allocated=1050,
        fallback_role_users=1, dry_run=False, users_skipped=3,
        by_role={"(null)": RoleAllocation(1, 350), "member": RoleAllocation(2, 700)})
