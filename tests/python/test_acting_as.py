"""credits_db.acting_as / credits_db.aio.acting_as: act as a user for one transaction.

The connections log in as a member of credits_user (as an application's request
login would), so the self-only rules apply; balances are read by the admin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.pq import TransactionStatus

import credits_db
from credits_db import aio, urls
from tests.support import pgbouncer
from tests.support.databases import Database, Server
from tests.support.helpers import Conn, add_users, balance


class Boom(Exception):
    """Raised inside a block to see it rolled back."""


@pytest.fixture(scope="module")
def user_login(server: Server, installed_template: Database) -> Iterator[pgbouncer.Login]:
    """A login that is a member of credits_user (the role exists once credits-db is installed)."""
    with pgbouncer.login_role(server.admin_url) as login:
        yield login


def user_url(db: Database, login: pgbouncer.Login) -> str:
    """``db``'s URL as ``login`` (password for servers that ask; trust ignores it)."""
    parts = urlsplit(urls.to_libpq(db.url))
    where = parts.netloc.rpartition("@")[2]
    credentials = f"{quote(login.user, safe='')}:{quote(login.password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{where}"))


@pytest.fixture
def user_conn(db: Database, user_login: pgbouncer.Login) -> Iterator[Conn]:
    """An autocommit connection of the credits_user login."""
    with psycopg.connect(user_url(db, user_login), autocommit=True) as connection:
        yield connection


def acting(conn: Conn) -> str | None:
    """Who the database thinks the current request acts for."""
    row = conn.execute("SELECT credits_current_user_id()::text").fetchone()
    assert row is not None
    return None if row[0] is None else str(row[0])


def status(conn: Conn) -> TransactionStatus:
    """The client's transaction status now."""
    return conn.info.transaction_status


def spend_then_fail(conn: Conn, user: str, amount: int) -> None:
    """Debit as ``user`` in an acting_as block that then raises."""
    with credits_db.acting_as(conn, user):
        credits_db.debit(conn, user, amount)
        raise Boom


def test_exported() -> None:
    assert "acting_as" in credits_db.__all__
    assert credits_db.acting_as.__doc__ and aio.acting_as.__doc__


def test_acting_as_spends_own_credits_for_one_transaction(conn: Conn, user_conn: Conn) -> None:
    alice, bob = add_users(conn, "member", "member")
    with credits_db.acting_as(user_conn, alice) as same:
        assert same is user_conn
        assert status(user_conn) == TransactionStatus.INTRANS
        assert acting(user_conn) == alice
        assert credits_db.debit(user_conn, alice, 10).remaining_credits == 340
        assert credits_db.balance(user_conn, alice).spendable == 340
    assert status(user_conn) == TransactionStatus.IDLE  # committed
    with pytest.raises(credits_db.PermissionDenied), credits_db.acting_as(user_conn, alice):
        credits_db.balance(user_conn, bob)  # alice is not bob
    assert acting(user_conn) is None  # the setting ended with the transaction
    with pytest.raises(credits_db.PermissionDenied):
        credits_db.debit(user_conn, alice, 10)
    assert balance(conn, alice) == (350, 10, 340)
    assert balance(conn, bob) == (350, 0, 350)


def test_an_exception_rolls_the_block_back(conn: Conn, user_conn: Conn) -> None:
    (alice,) = add_users(conn, "member")
    with pytest.raises(Boom):
        spend_then_fail(user_conn, alice, 10)
    assert acting(user_conn) is None
    assert balance(conn, alice) == (350, 0, 350)


def test_nested_in_the_callers_transaction_restores_its_value(conn: Conn,
                                                               user_conn: Conn) -> None:
    alice, bob = add_users(conn, "member", "member")
    with user_conn.transaction():
        user_conn.execute("SELECT set_config('credits.user_id', %s, true)", (bob,))
        with credits_db.acting_as(user_conn, alice):  # a savepoint
            credits_db.debit(user_conn, alice, 10)
            with credits_db.acting_as(user_conn, bob):
                credits_db.debit(user_conn, bob, 1)
            assert acting(user_conn) == alice
        assert acting(user_conn) == bob  # the caller's value is back
        credits_db.debit(user_conn, bob, 2)
        with pytest.raises(Boom):  # rolls back to the savepoint: the debit and the setting
            spend_then_fail(user_conn, alice, 100)
        assert acting(user_conn) == bob
        assert balance(conn, alice) == (350, 0, 350)  # the caller has not committed
    assert acting(user_conn) is None
    assert balance(conn, alice) == (350, 10, 340)
    assert balance(conn, bob) == (350, 3, 347)


def test_nested_in_an_implicit_transaction(db: Database, conn: Conn,
                                           user_login: pgbouncer.Login) -> None:
    """psycopg's default (not autocommit): the caller's transaction commits the block."""
    (alice,) = add_users(conn, "member")
    with psycopg.connect(user_url(db, user_login)) as user:
        assert acting(user) is None  # opens the caller's transaction
        with credits_db.acting_as(user, alice):
            credits_db.debit(user, alice, 10)
        assert acting(user) is None  # the value before the block (never set: nobody)
        assert status(user) == TransactionStatus.INTRANS
        assert balance(conn, alice) == (350, 0, 350)
        user.commit()
        with credits_db.acting_as(user, alice):  # idle: a transaction of its own
            credits_db.debit(user, alice, 5)
        assert status(user) == TransactionStatus.IDLE
    assert balance(conn, alice) == (350, 15, 335)


def test_a_malformed_user_id_is_refused_before_anything_is_sent(user_conn: Conn) -> None:
    for bad in ("not-a-uuid", "", "1; SET ROLE credits_admin"):
        with pytest.raises(credits_db.InvalidArgument) as refused, \
                credits_db.acting_as(user_conn, bad):
            pass  # pragma: no cover - never entered
        assert refused.value.sqlstate_received == "22P02"
        assert status(user_conn) == TransactionStatus.IDLE


def test_async_acting_as(db: Database, conn: Conn, user_login: pgbouncer.Login) -> None:
    alice, bob = add_users(conn, "member", "member")

    async def who(aconn: psycopg.AsyncConnection[Any]) -> str | None:
        cursor = await aconn.execute("SELECT credits_current_user_id()::text")
        row = await cursor.fetchone()
        assert row is not None
        return None if row[0] is None else str(row[0])

    async def spend_then_fail_async(aconn: psycopg.AsyncConnection[Any]) -> None:
        async with aio.acting_as(aconn, alice):
            await aio.debit(aconn, alice, 100)
            raise Boom

    async def main() -> list[str | None]:
        seen: list[str | None] = []
        async with await psycopg.AsyncConnection.connect(user_url(db, user_login),
                                                         autocommit=True) as aconn:
            async with aio.acting_as(aconn, alice) as same:
                assert same is aconn
                seen.append(await who(aconn))
                await aio.debit(aconn, alice, 10)
                async with aio.acting_as(aconn, bob):
                    seen.append(await who(aconn))
                    await aio.debit(aconn, bob, 1)
                seen.append(await who(aconn))
            seen.append(await who(aconn))
            with pytest.raises(credits_db.PermissionDenied):
                await aio.debit(aconn, alice, 1)
            with pytest.raises(Boom):
                await spend_then_fail_async(aconn)
            with pytest.raises(credits_db.InvalidArgument):
                async with aio.acting_as(aconn, "nobody"):
                    pass  # pragma: no cover
        return seen

    assert asyncio.run(main()) == [alice, bob, alice, None]
    assert balance(conn, alice) == (350, 10, 340)
    assert balance(conn, bob) == (350, 1, 349)


def test_acting_as_on_a_sqlalchemy_connection(db: Database, conn: Conn,
                                              user_login: pgbouncer.Login) -> None:
    alice, bob = add_users(conn, "member", "member")

    def who(connection: sa.Connection) -> str | None:
        value = connection.exec_driver_sql("SELECT credits_current_user_id()::text").scalar()
        return None if value is None else str(value)

    def spend_then_fail(connection: sa.Connection) -> None:
        with credits_db.acting_as(connection, alice):
            credits_db.debit(connection, alice, 100)
            raise Boom

    engine = sa.create_engine(urls.to_sqlalchemy(user_url(db, user_login)))
    try:
        with engine.connect() as connection:
            with credits_db.acting_as(connection, alice) as same:  # conn.begin(): committed
                assert same is connection and who(connection) == alice
                credits_db.debit(connection, alice, 10)
            assert not connection.in_transaction()
            assert balance(conn, alice) == (350, 10, 340)
            assert who(connection) is None
            connection.rollback()

            with pytest.raises(Boom):
                spend_then_fail(connection)
            assert not connection.in_transaction()

            with connection.begin(), credits_db.acting_as(connection, bob):
                with credits_db.acting_as(connection, alice):  # a savepoint
                    credits_db.debit(connection, alice, 1)
                assert who(connection) == bob  # bob's block, restored
                credits_db.debit(connection, bob, 2)
                with pytest.raises(Boom):
                    spend_then_fail(connection)  # rolled back to its savepoint
                assert who(connection) == bob
            assert who(connection) is None
            connection.rollback()

        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as autocommit, \
                pytest.raises(credits_db.InvalidArgument, match="AUTOCOMMIT"), \
                credits_db.acting_as(autocommit, alice):
            pass  # pragma: no cover - never entered
    finally:
        engine.dispose()
    assert balance(conn, alice) == (350, 11, 339)
    assert balance(conn, bob) == (350, 2, 348)
