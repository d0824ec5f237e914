"""Through a real transaction pooler (PgBouncer, pool_mode = transaction).

Clients of one login share one server connection (``default_pool_size = 1``),
as behind Supabase's pooler on port 6543. The package must work there with
psycopg's default connection settings (a statement repeated five times would be
prepared server-side, and a prepared statement outlives the client's turn), and
acting as a user must last one transaction, never leak to the next client.

Who shares which server connection is read from the database
(``pg_backend_pid()``, ``pg_stat_activity``); nothing waits on a clock.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import credits_db
from credits_db import aio, urls
from tests.support import pgbouncer
from tests.support.databases import Database, Server
from tests.support.helpers import Conn, add_users, balance

CALLS = 24
"""Calls per client and per function: well past psycopg's prepare threshold (5)."""


@pytest.fixture(scope="module")
def user_login(server: Server, installed_template: Database) -> Iterator[pgbouncer.Login]:
    """A login that is a member of credits_user (credits-db's roles exist once installed)."""
    with pgbouncer.login_role(server.admin_url) as login:
        yield login


@pytest.fixture(scope="module")
def bouncer(server: Server, user_login: pgbouncer.Login) -> Iterator[pgbouncer.PgBouncer]:
    """PgBouncer in transaction mode, one server connection per database and login."""
    with pgbouncer.running(server.admin_url, [user_login], pool_size=1) as running:
        yield running


def one(conn: Conn, query: str, params: Any = None) -> Any:
    """The single value of ``query`` (committed when the client is not in autocommit)."""
    row = conn.execute(query, params).fetchone()
    assert row is not None
    if not conn.autocommit:
        conn.commit()
    return row[0]


def backend_pid(conn: Conn) -> int:
    """The server connection this client got for this one statement."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    if not conn.autocommit:
        conn.commit()
    return int(row[0])


def server_connections(direct: Conn, database: Database, user: str) -> int:
    """How many server connections ``user`` has to ``database`` (PgBouncer's pool),
    besides ``direct`` itself."""
    row = direct.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                         " AND usename = %s AND pid <> pg_backend_pid()",
                         (database.name, user)).fetchone()
    assert row is not None
    return int(row[0])


def test_repeated_calls_from_clients_sharing_a_server_connection(
        db: Database, conn: Conn, bouncer: pgbouncer.PgBouncer) -> None:
    """Default psycopg settings: one autocommit client, one committing its transactions."""
    users = add_users(conn, "member", "member")
    url = bouncer.url(db.name)
    with psycopg.connect(url, autocommit=True) as first, psycopg.connect(url) as second:
        clients: list[Conn] = [first, second]
        assert first.prepare_threshold == second.prepare_threshold == 5  # psycopg's default
        assert backend_pid(first) == backend_pid(second)  # one server connection for both
        for _ in range(CALLS):
            for client, user in zip(clients, users, strict=True):
                credits_db.grant(client, user, 2)
                assert credits_db.debit(client, user, 1).account_user_id.hex == user.replace(
                    "-", "")
                credits_db.balance(client, user)
                if not client.autocommit:
                    client.commit()
        spendable = [credits_db.balance(c, u).spendable for c, u in zip(clients, users,
                                                                         strict=True)]
        second.commit()
    assert spendable == [350 + CALLS, 350 + CALLS]
    for user in users:
        assert balance(conn, user) == (350 + 2 * CALLS, CALLS, 350 + CALLS)
    assert server_connections(conn, db, bouncer.admin.user) == 1


def test_acting_as_lasts_one_transaction_and_never_reaches_the_next_client(
        db: Database, conn: Conn, bouncer: pgbouncer.PgBouncer,
        user_login: pgbouncer.Login) -> None:
    """Client A acts as alice and spends; client B, next on the same server
    connection, is nobody: it cannot spend or read alice's credits."""
    alice, bob = add_users(conn, "member", "member")
    url = bouncer.url(db.name, user_login)
    with psycopg.connect(url) as a, psycopg.connect(url, autocommit=True) as b:
        assert backend_pid(a) == backend_pid(b)  # one server connection for both clients
        for _ in range(CALLS):  # repeated too: past the prepare threshold
            with credits_db.acting_as(a, alice):
                assert a.execute("SELECT credits_current_user_id()::text").fetchone() == (alice,)
                credits_db.debit(a, alice, 1)
            assert a.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

            assert one(b, "SELECT credits_current_user_id()") is None
            with pytest.raises(credits_db.PermissionDenied) as refused:
                credits_db.debit(b, alice, 1)
            assert refused.value.sqlstate == "42501"
            with pytest.raises(credits_db.PermissionDenied):
                credits_db.balance(b, alice)
            assert b.execute("SELECT count(*) FROM user_credits").fetchone() == (0,)  # RLS

            with pytest.raises(credits_db.PermissionDenied), credits_db.acting_as(b, bob):
                credits_db.debit(b, alice, 1)  # acting as bob is not alice either
            with credits_db.acting_as(b, bob):
                assert credits_db.balance(b, bob).spendable >= 350 - CALLS
                credits_db.debit(b, bob, 1)
        assert server_connections(conn, db, user_login.user) == 1
    assert balance(conn, alice) == (350, CALLS, 350 - CALLS)
    assert balance(conn, bob) == (350, CALLS, 350 - CALLS)


def test_a_session_setting_leaks_to_the_next_client(
        db: Database, conn: Conn, bouncer: pgbouncer.PgBouncer,
        user_login: pgbouncer.Login) -> None:
    """Why the docs never offer a per-session ``SET credits.user_id`` behind a pooler:
    the server connection keeps it, and the next client spends as that user."""
    (alice,) = add_users(conn, "member")
    url = bouncer.url(db.name, user_login)
    with psycopg.connect(url, autocommit=True) as a, psycopg.connect(url, autocommit=True) as b:
        assert backend_pid(a) == backend_pid(b)
        a.execute("SELECT set_config('credits.user_id', %s, false)", (alice,))  # per session
        assert one(b, "SELECT credits_current_user_id()::text") == alice
        credits_db.debit(b, alice, 100)  # client B spends client A's credits
        b.execute("RESET credits.user_id")
    assert balance(conn, alice) == (350, 100, 250)


def test_async_api_through_the_pooler(db: Database, conn: Conn,
                                      bouncer: pgbouncer.PgBouncer,
                                      user_login: pgbouncer.Login) -> None:
    """Two async clients (autocommit, and committing) run concurrently on one server
    connection; aio.acting_as leaves nothing behind for the other."""
    alice, bob = add_users(conn, "member", "member")

    async def spend(client: psycopg.AsyncConnection[Any], user: str) -> list[int]:
        remaining = []
        for _ in range(CALLS):
            await aio.grant(client, user, 2)
            remaining.append((await aio.debit(client, user, 1)).remaining_credits)
            await aio.balance(client, user)
            if not client.autocommit:
                await client.commit()
        return remaining

    async def act(client: psycopg.AsyncConnection[Any], other: psycopg.AsyncConnection[Any]
                  ) -> list[Any]:
        seen = []
        for _ in range(CALLS):
            async with aio.acting_as(client, alice):
                await aio.debit(client, alice, 1)
            cursor = await other.execute("SELECT credits_current_user_id()")
            seen.append(await cursor.fetchone())
            with pytest.raises(credits_db.PermissionDenied):
                await aio.debit(other, alice, 1)
        return seen

    async def main() -> tuple[list[list[int]], list[Any]]:
        admin_url = bouncer.url(db.name)
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as x, \
                await psycopg.AsyncConnection.connect(admin_url) as y:
            spent = await asyncio.gather(spend(x, alice), spend(y, bob))
        user_url = bouncer.url(db.name, user_login)
        async with await psycopg.AsyncConnection.connect(user_url, autocommit=True) as a, \
                await psycopg.AsyncConnection.connect(user_url, autocommit=True) as b:
            seen = await act(a, b)
        return list(spent), seen

    spent, seen = asyncio.run(main())
    assert spent == [[350 + i + 1 for i in range(CALLS)]] * 2
    assert seen == [(None,)] * CALLS
    assert balance(conn, alice) == (350 + 2 * CALLS, 2 * CALLS, 350)
    assert balance(conn, bob) == (350 + 2 * CALLS, CALLS, 350 + CALLS)
    assert server_connections(conn, db, bouncer.admin.user) == 1
    assert server_connections(conn, db, user_login.user) == 1


def test_sqlalchemy_through_the_pooler(db: Database, conn: Conn,
                                       bouncer: pgbouncer.PgBouncer) -> None:
    """An Engine with default settings (its own pool of two connections here) and a
    Connection held by the caller, taking turns on one server connection."""
    alice, bob = add_users(conn, "member", "member")
    engine = sa.create_engine(urls.to_sqlalchemy(bouncer.url(db.name)))
    try:
        with engine.connect() as held:
            for _ in range(CALLS):
                credits_db.grant(engine, alice, 2)  # the Engine path commits by itself
                credits_db.debit(engine, alice, 1)
                credits_db.debit(held, bob, 1)  # joins (autobegins) held's transaction
                assert credits_db.balance(held, bob).spendable >= 350 - CALLS
                assert held.in_transaction()
                held.commit()
            credits_db.debit(held, bob, 100)
            held.rollback()  # the caller's rollback undoes it
            pids = {held.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()}
            held.commit()
            with engine.connect() as other:
                pids.add(other.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
                other.commit()
        assert isinstance(engine.pool, sa.QueuePool) and engine.pool.checkedin() == 2
        assert len(pids) == 1  # both of the Engine's connections: one server connection
    finally:
        engine.dispose()
    assert balance(conn, alice) == (350 + 2 * CALLS, CALLS, 350 + CALLS)
    assert balance(conn, bob) == (350, CALLS, 350 - CALLS)
    assert server_connections(conn, db, bouncer.admin.user) <= 1


def test_sqlalchemy_acting_as_through_the_pooler(db: Database, conn: Conn,
                                                 bouncer: pgbouncer.PgBouncer,
                                                 user_login: pgbouncer.Login) -> None:
    (alice,) = add_users(conn, "member")
    engine = sa.create_engine(urls.to_sqlalchemy(bouncer.url(db.name, user_login)))
    try:
        with engine.connect() as held:
            for _ in range(CALLS):
                with credits_db.acting_as(held, alice):
                    credits_db.debit(held, alice, 1)
                with pytest.raises(credits_db.PermissionDenied):
                    credits_db.debit(engine, alice, 1)  # the Engine's other connection
            pids = {held.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()}
            held.commit()
            with engine.connect() as other:
                pids.add(other.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
                other.commit()
        assert len(pids) == 1
    finally:
        engine.dispose()
    assert balance(conn, alice) == (350, CALLS, 350 - CALLS)


def test_pgbouncer_runs_unprivileged_and_is_stopped_after(server: Server) -> None:
    with pgbouncer.running(server.admin_url) as running:
        with psycopg.connect(running.url("postgres"), autocommit=True) as client:
            assert client.execute("SELECT 1").fetchone() == (1,)
        uids = Path(f"/proc/{running.pid}/status").read_text().split("Uid:")[1].split()[:2]
        assert "0" not in uids  # PgBouncer refuses root; the fixture never asks it to
    with pytest.raises(ProcessLookupError):
        os.kill(running.pid, 0)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(running.url("postgres"), connect_timeout=2)


def test_without_pgbouncer_the_tests_skip_with_the_reason(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(pgbouncer, "DEBIAN_BINARY", "/nonexistent/pgbouncer")
    with pytest.raises(pytest.skip.Exception, match="pgbouncer is not installed"):
        pgbouncer.require_binary()
