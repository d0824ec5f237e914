"""The Python API accepts psycopg and SQLAlchemy connections, sync and async."""

from __future__ import annotations

import asyncio
import gc
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.rows import dict_row

import credits_db
from credits_db import aio, urls
from tests.support.databases import Database
from tests.support.helpers import add_users, add_users_without_credits, balance


def test_backfill_with_psycopg_joins_the_callers_transaction(db: Database) -> None:
    with db.connect() as setup:
        add_users_without_credits(setup, "admin", None)
    with db.connect(autocommit=False) as conn:
        summary = credits_db.backfill(conn)
        assert isinstance(summary, credits_db.BackfillSummary)
        assert summary.users_backfilled == 2 and summary.fallback_role_users == 1
        assert summary.by_role["admin"] == credits_db.RoleAllocation(users=1, credits=1000)
        conn.rollback()
    with db.connect() as conn:
        assert credits_db.backfill(conn, dry_run=True).users_without_credits == 2


def test_backfill_with_sqlalchemy_engine_and_connection(db: Database) -> None:
    with db.connect() as setup:
        add_users_without_credits(setup, "member", "member", "admin")
    engine = sa.create_engine(urls.to_sqlalchemy(db.url))
    try:
        assert credits_db.backfill(engine, limit=1).users_backfilled == 1
        with engine.connect() as connection:
            assert credits_db.backfill(connection).users_backfilled == 2
            connection.commit()
        report = credits_db.allocation_report(engine)
        assert (report.users_with_credits, report.users_without_credits) == (3, 0)
        assert report.by_role["member"].total_credits == 700
    finally:
        engine.dispose()


def test_async_backfill(db: Database) -> None:
    with db.connect() as setup:
        add_users_without_credits(setup, "super_admin")

    async def main() -> credits_db.BackfillSummary:
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as conn:
            return await aio.backfill(conn)

    summary = asyncio.run(main())
    assert summary.credits_allocated == 10000


def test_async_backfill_batch_walks_to_the_end(db: Database) -> None:
    with db.connect() as setup:
        ids = add_users_without_credits(setup, "member", "admin", None)

    async def main() -> list[credits_db.BackfillBatch]:
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as conn:
            first = await aio.backfill_batch(conn, limit=2)
            second = await aio.backfill_batch(conn, after=first.last_user_id, limit=2)
            return [first, second, await aio.backfill_batch(conn, after=second.last_user_id)]

    first, second, done = asyncio.run(main())
    assert (first.users_backfilled, second.users_backfilled) == (2, 1)
    assert second.last_user_id == max(uuid.UUID(i) for i in ids)
    assert first.credits_allocated + second.credits_allocated == 350 + 1000 + 350
    assert done.last_user_id is None and done.users_scanned == 0


def test_database_errors_map_to_exceptions(db: Database) -> None:
    with db.connect() as conn:
        with pytest.raises(credits_db.InvalidArgument) as excinfo:
            credits_db.backfill(conn, limit=0)
        assert isinstance(excinfo.value.__cause__, psycopg.Error)
        with pytest.raises(psycopg.Error) as raw:
            conn.execute("DELETE FROM credit_usage_log")
        assert isinstance(credits_db.errors.translate(raw.value), credits_db.AppendOnlyViolation)


def test_append_only_violation_is_translated(db: Database) -> None:
    engine = sa.create_engine(urls.to_sqlalchemy(db.url))
    try:
        with engine.connect() as connection, pytest.raises(sa.exc.DBAPIError) as excinfo:
            connection.exec_driver_sql("TRUNCATE credit_usage_log")
        assert isinstance(credits_db.errors.translate(excinfo.value),
                          credits_db.AppendOnlyViolation)
    finally:
        engine.dispose()


def test_threads_sharing_a_connection_each_get_their_own_result(db: Database) -> None:
    """The package keeps one cursor per connection: calls from threads sharing the
    connection must not read each other's result (execute and fetch stay paired)."""
    with db.connect() as setup:
        users = add_users(setup, *["member"] * 4)
    with db.connect() as conn:
        def spend(user: str) -> list[tuple[str, int]]:
            return [(str(op.account_user_id), op.remaining_credits)
                    for op in (credits_db.debit(conn, user, 1) for _ in range(40))]

        with ThreadPoolExecutor(max_workers=len(users)) as pool:
            results = dict(zip(users, pool.map(spend, users), strict=True))
        for user, seen in results.items():
            assert seen == [(user, 349 - i) for i in range(40)]
        assert balance(conn, users[0]) == (350, 40, 310)


def test_async_tasks_sharing_a_connection_each_get_their_own_result(db: Database) -> None:
    with db.connect() as setup:
        users = add_users(setup, *["member"] * 4)

    async def main() -> dict[str, list[tuple[str, int]]]:
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as conn:
            async def spend(user: str) -> list[tuple[str, int]]:
                ops = [await aio.debit(conn, user, 1) for _ in range(20)]
                return [(str(op.account_user_id), op.remaining_credits) for op in ops]

            seen = await asyncio.gather(*(spend(user) for user in users))
            return dict(zip(users, seen, strict=True))

    for user, seen in asyncio.run(main()).items():
        assert seen == [(user, 349 - i) for i in range(20)]


def test_the_kept_cursor_lets_the_connection_go(db: Database) -> None:
    """The connection and the package's cursor on it are freed once the caller drops it."""
    with db.connect() as setup:
        (user,) = add_users(setup, "member")
    conn = db.connect()
    credits_db.debit(conn, user, 1)
    gone = weakref.ref(conn)
    conn.close()
    del conn
    gc.collect()
    assert gone() is None


def test_the_callers_row_factory_stays_theirs(db: Database) -> None:
    with db.connect() as setup:
        (user,) = add_users(setup, "member")
    with psycopg.connect(db.url, autocommit=True, row_factory=dict_row) as conn:
        assert credits_db.debit(conn, user, 1).remaining_credits == 349
        assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
        assert credits_db.debit(conn, user, 1).remaining_credits == 348


class _LockWitness:
    """Stands in for the package's kept cursor and notes whether its lock was held."""

    def __init__(self, lock: Any, cursor: Any) -> None:
        self.lock, self.cursor = lock, cursor
        self.held: list[bool] = []

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.held.append(self.lock.locked())
        result = self.cursor.execute(*args, **kwargs)
        return self if result is self.cursor else result

    def fetchone(self) -> Any:
        self.held.append(self.lock.locked())
        return self.cursor.fetchone()


def test_execute_and_fetch_on_the_kept_cursor_hold_its_lock(db: Database) -> None:
    """Threads sharing a connection share the kept cursor: each call holds the
    cursor's lock from execute to fetch, so none reads another's result."""
    with db.connect() as setup:
        (user,) = add_users(setup, "member")
    with db.connect() as conn:
        credits_db.debit(conn, user, 1)
        lock, cursor = conn._credits_db_cursor  # type: ignore[attr-defined]
        witness = _LockWitness(lock, cursor)
        conn._credits_db_cursor = (lock, witness)  # type: ignore[attr-defined]
        assert credits_db.debit(conn, user, 1).remaining_credits == 348
        assert witness.held == [True, True]


def test_async_execute_and_fetch_on_the_kept_cursor_hold_its_lock(db: Database) -> None:
    with db.connect() as setup:
        (user,) = add_users(setup, "member")

    class AsyncWitness(_LockWitness):
        async def execute(self, *args: Any, **kwargs: Any) -> Any:
            self.held.append(self.lock.locked())
            return await self.cursor.execute(*args, **kwargs)

        async def fetchone(self) -> Any:
            self.held.append(self.lock.locked())
            return await self.cursor.fetchone()

    async def main() -> list[bool]:
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as conn:
            await aio.debit(conn, user, 1)
            lock, cursor = conn._credits_db_cursor  # type: ignore[attr-defined]
            witness = AsyncWitness(lock, cursor)
            conn._credits_db_cursor = (lock, witness)  # type: ignore[attr-defined]
            assert (await aio.debit(conn, user, 1)).remaining_credits == 348
            held: list[bool] = witness.held
            return held

    assert asyncio.run(main()) == [True, True]
