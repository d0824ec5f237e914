"""Faults: a backend killed mid-backfill or mid-debit, a connection dropped before
the answer arrives, lock and statement timeouts on a contended account.

Every wait polls the server for a state (pg_stat_activity); nothing sleeps.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import credits_db
import credits_db.aio
from credits_db import errors, urls
from tests.support.databases import Database
from tests.support.faults import (
    POLL_TIMEOUT,
    killed_at_commit,
    terminate,
    wait_for,
    wait_until_waiting_on_a_lock,
)
from tests.support.helpers import Conn, add_users, add_users_without_credits, balance
from tests.support.proxy import CuttableProxy
from tests.support.sessions import Background
from tests.support.spending import integrity, state


def lock_account(db: Database, user: str) -> Conn:
    """A connection holding the row lock of ``user``'s balance (until it rolls back)."""
    holder = db.connect(autocommit=False)
    holder.execute("SELECT 1 FROM user_credits WHERE user_id = %s FOR UPDATE", (user,))
    return holder


def debits(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM credit_usage_log WHERE type = 'debit'").fetchone()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------- backfill


@pytest.mark.slow
def test_backfill_killed_midway_leaves_nothing_and_a_rerun_completes(db: Database,
                                                                     conn: Conn) -> None:
    users = 200_000
    add_users_without_credits(conn, *(["member", "team_admin", None, "admin"] * (users // 4)))
    worker = db.connect()
    pid = worker.info.backend_pid
    running = Background(lambda: credits_db.backfill(worker))
    wait_for(conn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
                   " AND query ILIKE '%%backfill_user_credits%%'", (pid,), "the backfill to run",
             running)
    terminate(conn, pid)

    lost = running.outcome()
    assert isinstance(lost, credits_db.ConnectionLost), f"the backfill was not interrupted: {lost}"
    assert lost.outcome_unknown  # an autocommit call: the server might have committed
    assert conn.execute("SELECT (SELECT count(*) FROM user_credits),"
                        " (SELECT count(*) FROM credit_usage_log)").fetchone() == (0, 0)
    assert integrity(conn) == []

    summary = credits_db.backfill(conn)
    assert (summary.users_without_credits, summary.users_backfilled) == (users, users)
    assert conn.execute(
        "SELECT count(*), count(DISTINCT user_id), count(*) FILTER (WHERE source <> 'backfill')"
        " FROM credit_usage_log").fetchone() == (users, users, 0)
    assert conn.execute("SELECT count(*) FROM user_credits").fetchone() == (users,)
    assert conn.execute("SELECT count(*) FROM credits_backfill_candidates").fetchone() == (0,)
    assert integrity(conn) == []
    assert credits_db.backfill(conn).users_backfilled == 0
    worker.close()


# --------------------------------------------------------------------------- debit, killed


def test_debit_killed_inside_an_open_transaction_commits_nothing(db: Database,
                                                                 conn: Conn) -> None:
    user, other = add_users(conn, "member", "member")
    before = state(conn)
    victim = db.connect(autocommit=False)
    pid = victim.info.backend_pid
    credits_db.debit(victim, user, 100)  # done, but its transaction is still open
    holder = lock_account(db, other)
    blocked = Background(lambda: credits_db.debit(victim, other, 5))
    wait_until_waiting_on_a_lock(conn, pid, blocked)
    terminate(conn, pid)

    lost = blocked.outcome()
    holder.rollback()
    assert isinstance(lost, credits_db.ConnectionLost), lost
    assert lost.outcome_unknown is False
    assert lost.sqlstate_received == "57P01"
    assert isinstance(lost.__cause__, psycopg.errors.AdminShutdown)
    assert "rolled back" in str(lost)
    assert state(conn) == before
    assert integrity(conn) == []
    # The connection is gone now: the next call never reaches the server.
    with pytest.raises(credits_db.ConnectionLost) as closed:
        credits_db.balance(victim, user)
    assert closed.value.outcome_unknown is False
    victim.close()
    holder.close()


def test_killed_between_the_debit_and_commit_commits_nothing(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")
    before = state(conn)
    victim = db.connect(autocommit=False)
    credits_db.debit(victim, user, 100, idempotency_key="k")
    terminate(conn, victim.info.backend_pid)
    with pytest.raises(psycopg.errors.AdminShutdown):
        victim.commit()  # psycopg's own COMMIT: the server had already rolled back
    assert state(conn) == before
    assert integrity(conn) == []
    # Retrying with the same key is a first debit, and only one.
    assert credits_db.debit(conn, user, 100, idempotency_key="k").replayed is False
    assert credits_db.debit(conn, user, 100, idempotency_key="k").replayed is True
    assert balance(conn, user) == (350, 100, 250)
    victim.close()


@contextmanager
def sa_connection(db: Database, **options: Any) -> Iterator[sa.Connection]:
    engine = sa.create_engine(urls.to_sqlalchemy(db.url), poolclass=sa.NullPool, **options)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _pid_of(connection: Any) -> int:
    if isinstance(connection, sa.Connection):
        driver = connection.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        return driver.info.backend_pid
    return int(connection.info.backend_pid)


@pytest.mark.parametrize(
    ("kind", "outcome_unknown"),
    [
        ("psycopg autocommit", True),
        ("psycopg transaction", False),
        ("psycopg autocommit, explicit transaction block", False),
        ("sqlalchemy connection", False),
        ("sqlalchemy autocommit", True),
        ("asyncio autocommit", True),
    ],
)
def test_connection_killed_mid_debit(db: Database, conn: Conn, kind: str,
                                     outcome_unknown: bool) -> None:
    """The debit is blocked on the account's row lock when its backend is terminated."""
    [user] = add_users(conn, "member")
    before = state(conn)
    holder = lock_account(db, user)
    pid: list[int] = []
    ready = threading.Event()

    def call() -> Any:
        if kind == "asyncio autocommit":
            async def main() -> Any:
                async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as a:
                    pid.append(a.info.backend_pid)
                    ready.set()
                    return await credits_db.aio.debit(a, user, 100, idempotency_key="k")
            return asyncio.run(main())
        if kind.startswith("sqlalchemy"):
            options = {"isolation_level": "AUTOCOMMIT"} if "autocommit" in kind else {}
            with sa_connection(db, **options) as connection:
                pid.append(_pid_of(connection))
                ready.set()
                return credits_db.debit(connection, user, 100, idempotency_key="k")
        with db.connect(autocommit="autocommit" in kind) as victim:
            pid.append(_pid_of(victim))
            ready.set()
            if kind.endswith("explicit transaction block"):
                victim.execute("BEGIN")
            return credits_db.debit(victim, user, 100, idempotency_key="k")

    blocked = Background(call)
    assert ready.wait(POLL_TIMEOUT), blocked.outcome()
    wait_until_waiting_on_a_lock(conn, pid[0], blocked)
    terminate(conn, pid[0])
    lost = blocked.outcome()
    holder.rollback()

    assert isinstance(lost, credits_db.ConnectionLost), repr(lost)
    assert lost.outcome_unknown is outcome_unknown
    assert lost.sqlstate_received == "57P01"
    assert ("may have committed" in str(lost)) is outcome_unknown
    assert state(conn) == before  # the server rolled the call back
    assert integrity(conn) == []
    # Whatever the client was told, a retry with the same key debits exactly once.
    assert credits_db.debit(conn, user, 100, idempotency_key="k").replayed is False
    assert credits_db.debit(conn, user, 100, idempotency_key="k").replayed is True
    assert (balance(conn, user), debits(conn)) == ((350, 100, 250), 1)
    holder.close()


def test_killed_while_idle_in_autocommit(db: Database, conn: Conn) -> None:
    """The FATAL the server sent an idle connection arrives as the next call's answer."""
    [user] = add_users(conn, "member")
    victim = db.connect()
    terminate(conn, victim.info.backend_pid)
    with pytest.raises(credits_db.ConnectionLost) as first:
        credits_db.debit(victim, user, 1)
    assert first.value.outcome_unknown is True  # the client cannot tell it was never run
    with pytest.raises(credits_db.ConnectionLost) as second:
        credits_db.debit(victim, user, 1)
    assert second.value.outcome_unknown is False  # closed already: nothing was sent
    assert balance(conn, user) == (350, 0, 350)
    victim.close()


@pytest.mark.parametrize("kind", ["engine", "psycopg autocommit"])
def test_connection_killed_during_commit_is_outcome_unknown(db: Database, conn: Conn,
                                                             kind: str) -> None:
    """A deferred trigger makes COMMIT wait on a lock the test holds; the backend is killed there."""
    [user] = add_users(conn, "member")
    before = state(conn)
    engine = sa.create_engine(urls.to_sqlalchemy(db.url), poolclass=sa.NullPool)
    victim = db.connect()
    target: sa.Engine | Conn = engine if kind == "engine" else victim
    lost = killed_at_commit(conn, lambda: credits_db.debit(target, user, 100,
                                                           idempotency_key="k"))

    assert isinstance(lost, credits_db.ConnectionLost), repr(lost)
    assert lost.outcome_unknown is True
    assert state(conn) == before  # here it had not committed; the client cannot know that
    assert credits_db.debit(conn, user, 100, idempotency_key="k").replayed is False
    assert credits_db.debit(conn, user, 100, idempotency_key="k").replayed is True
    assert (balance(conn, user), debits(conn)) == ((350, 100, 250), 1)
    victim.close()
    engine.dispose()


# --------------------------------------------------------------------------- lost answer


def test_answer_lost_after_commit_then_retry_with_the_same_key_replays(db: Database,
                                                                        conn: Conn) -> None:
    [user] = add_users(conn, "member")
    proxy = CuttableProxy(db.url)
    try:
        with psycopg.connect(proxy.url, autocommit=True) as victim:
            pid = victim.info.backend_pid
            proxy.cut.set()
            with pytest.raises(credits_db.ConnectionLost) as lost:
                credits_db.debit(victim, user, 100, idempotency_key="req-1")
            assert lost.value.outcome_unknown is True
            assert isinstance(lost.value.__cause__, psycopg.OperationalError)
            assert lost.value.__cause__.sqlstate is None  # no word from the server
            # The server did run it: wait for its backend to be idle again.
            wait_for(conn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'idle'",
                     (pid,), "the cut-off call to finish on the server")
    finally:
        proxy.close()
    assert (balance(conn, user), debits(conn)) == ((350, 100, 250), 1)
    retry = credits_db.debit(conn, user, 100, idempotency_key="req-1")
    assert (retry.replayed, retry.remaining_credits) == (True, 250)
    assert (balance(conn, user), debits(conn)) == ((350, 100, 250), 1)
    assert integrity(conn) == []


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize(("setting", "sqlstate", "words"),
                         [("lock_timeout", "55P03", "lock timeout"),
                          ("statement_timeout", "57014", "statement timeout")])
@pytest.mark.parametrize("pool", [False, True], ids=["own account", "team pool"])
def test_timeout_on_a_contended_account_is_retryable(db: Database, conn: Conn, setting: str,
                                                     sqlstate: str, words: str,
                                                     pool: bool) -> None:
    admin, user = add_users(conn, "team_admin", "member")
    amount = 100
    if pool:
        credits_db.add_team_member(conn, admin, user)
        amount = 1000  # more than the member's own 350: the pool pays
    account = admin if pool else user
    before = state(conn)
    holder = lock_account(db, account)
    conn.execute(f"SET {setting} = '100ms'")
    for key in (None, "req-7"):
        with pytest.raises(credits_db.RetryableError) as caught:
            credits_db.debit(conn, user, amount, idempotency_key=key)
        assert caught.value.sqlstate_received == sqlstate
        assert words in str(caught.value) and "retry" in str(caught.value)
        assert state(conn) == before
    holder.rollback()
    conn.execute(f"RESET {setting}")

    first = credits_db.debit(conn, user, amount, idempotency_key="req-7")
    again = credits_db.debit(conn, user, amount, idempotency_key="req-7")
    assert (first.replayed, again.replayed, again.log_id) == (False, True, first.log_id)
    assert first.from_team_pool is pool
    assert debits(conn) == 1
    assert (balance(conn, account) or (0, 0, 0))[1] == amount
    assert integrity(conn) == []
    holder.close()


# --------------------------------------------------------------------------- mapping


@pytest.mark.parametrize("sqlstate", sorted(s for s in errors.SQLSTATES if s[:2] != "CR"))
def test_every_standard_sqlstate_translates_to_its_class(sqlstate: str) -> None:
    """(The CR codes have no psycopg class; the SQL tests raise them for real.)"""
    translated = errors.translate(psycopg.errors.lookup(sqlstate)("boom"))
    assert type(translated) is errors.SQLSTATES[sqlstate]


@pytest.mark.parametrize("sqlstate", ["57P01", "57P02", "57P03", "57P04", "57P05", "25P03",
                                      "08000", "08001", "08003", "08004", "08006", "08007",
                                      "08P01"])
@pytest.mark.parametrize("may_have_committed", [True, False])
def test_connection_errors_become_connection_lost(sqlstate: str,
                                                  may_have_committed: bool) -> None:
    raw = psycopg.errors.lookup(sqlstate)("terminating connection")
    for exc in (raw, sa.exc.OperationalError("SELECT 1", {}, raw)):
        translated = errors.translate(exc, may_have_committed=may_have_committed)
        assert isinstance(translated, credits_db.ConnectionLost)
        assert translated.outcome_unknown is may_have_committed
        assert translated.sqlstate_received == sqlstate
        assert "terminating connection" in str(translated)


def test_a_socket_error_without_sqlstate_is_connection_lost() -> None:
    raw = psycopg.OperationalError("server closed the connection unexpectedly")
    translated = errors.translate(raw)
    assert isinstance(translated, credits_db.ConnectionLost) and translated.outcome_unknown
    assert "server closed the connection unexpectedly" in str(translated)
    # Other psycopg errors without a SQLSTATE are not connection problems: left as they are.
    misuse = psycopg.ProgrammingError("bad query")
    assert errors.translate(misuse) is misuse
