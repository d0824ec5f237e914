"""The package never prepares its statements on the server (so a transaction pooler
can stand between), and never changes how the caller's own statements are sent.

``pg_prepared_statements`` lists the current session's prepared statements: psycopg
would add one after a statement's fifth execution (``prepare_threshold`` 5).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa

import credits_db
from credits_db import aio, urls
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, balance

CALLS = 20

PREPARED = "SELECT count(*) FROM pg_prepared_statements"


def prepared(conn: Conn) -> int:
    row = conn.execute(PREPARED, prepare=False).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def engine(db: Database) -> Iterator[sa.Engine]:
    """An Engine with SQLAlchemy's and psycopg's default settings."""
    engine = sa.create_engine(urls.to_sqlalchemy(db.url))
    yield engine
    engine.dispose()


def test_psycopg_calls_are_not_prepared(conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    for _ in range(CALLS):
        credits_db.debit(conn, user, 1)
        credits_db.balance(conn, user)
    assert prepared(conn) == 0
    assert conn.prepare_threshold == 5  # the caller's setting, untouched
    assert balance(conn, user) == (350, CALLS, 350 - CALLS)


def test_async_calls_are_not_prepared(db: Database, conn: Conn) -> None:
    (user,) = add_users(conn, "member")

    async def main() -> tuple[int, int | None]:
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as aconn:
            for _ in range(CALLS):
                await aio.debit(aconn, user, 1)
                await aio.balance(aconn, user)
            cursor = await aconn.execute(PREPARED, prepare=False)
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0]), aconn.prepare_threshold

    assert asyncio.run(main()) == (0, 5)
    assert balance(conn, user) == (350, CALLS, 350 - CALLS)


def test_sqlalchemy_calls_are_not_prepared_and_the_callers_are(engine: sa.Engine,
                                                                conn: Conn) -> None:
    """The driver connection's prepare_threshold is off for the package's statement only."""
    (user,) = add_users(conn, "member")
    with engine.connect() as connection:
        for _ in range(CALLS):
            credits_db.debit(connection, user, 1)
        assert connection.exec_driver_sql(PREPARED).scalar_one() == 0
        driver = connection.connection.driver_connection
        assert isinstance(driver, psycopg.Connection) and driver.prepare_threshold == 5
        for _ in range(6):  # the caller's own statement is prepared as psycopg would
            connection.exec_driver_sql("SELECT 1").scalar_one()
        assert connection.exec_driver_sql(PREPARED).scalar_one() == 1
        connection.commit()
    for _ in range(CALLS):
        credits_db.grant(engine, user, 1)
    assert balance(conn, user) == (350 + CALLS, CALLS, 350)


def test_sqlalchemy_connection_autobegins_and_the_caller_ends_it(engine: sa.Engine,
                                                                conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    with engine.connect() as connection:
        assert not connection.in_transaction()
        credits_db.debit(connection, user, 10)
        assert connection.in_transaction()  # as any statement would: autobegin
        connection.rollback()
        assert balance(conn, user) == (350, 0, 350)
        credits_db.debit(connection, user, 10)
        connection.commit()
        assert balance(conn, user) == (350, 10, 340)
        with connection.begin():  # an explicit transaction, committed by the caller's block
            credits_db.debit(connection, user, 5)
            credits_db.debit(connection, user, 5)
            assert balance(conn, user) == (350, 10, 340)  # not committed yet
        with connection.begin():
            savepoint = connection.begin_nested()
            credits_db.debit(connection, user, 100)
            savepoint.rollback()  # undoes that call only
            credits_db.debit(connection, user, 1)
    assert balance(conn, user) == (350, 21, 329)


def test_sqlalchemy_autocommit_connection(engine: sa.Engine, conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        credits_db.debit(connection, user, 10)
        assert balance(conn, user) == (350, 10, 340)  # committed by itself


def test_engine_path_commits(engine: sa.Engine, conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    spent = credits_db.debit(engine, user, 10)
    assert spent.remaining_credits == 340
    assert balance(conn, user) == (350, 10, 340)
    with pytest.raises(credits_db.InsufficientCredits):
        credits_db.debit(engine, user, 1000)
    assert balance(conn, user) == (350, 10, 340)
    assert isinstance(engine.pool, sa.QueuePool) and engine.pool.checkedout() == 0
