"""The Python API accepts psycopg and SQLAlchemy connections, sync and async."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
import sqlalchemy as sa

import credits_db
from credits_db import aio, urls
from tests.conftest import Database
from tests.helpers import add_users_without_credits


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
