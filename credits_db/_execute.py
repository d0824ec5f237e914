"""Run a :class:`Call` on whatever connection the caller has.

Accepted: a psycopg ``Connection`` or ``AsyncConnection``, a SQLAlchemy
``Connection`` or ``Engine``. A connection joins the caller's transaction (the
caller commits, or uses autocommit); an Engine gets its own transaction,
committed before the call returns.

When the connection breaks, :class:`~credits_db.errors.ConnectionLost` says
whether the call may have committed (``outcome_unknown``). That is decided from
the connection's state *before* the statement is sent, since a broken
connection may no longer tell: only a statement sent in autocommit mode,
outside any transaction block, commits by itself.

**Never prepared on the server.** psycopg prepares a statement server-side
after it ran five times on a connection (``prepare_threshold``). Behind a
transaction pooler (PgBouncer, Supabase's pooler on port 6543) a prepared
statement lives on a server connection the next transaction may not get, and
other clients on that server connection reuse the same names: ``42P05
prepared statement "_pg3_0" already exists`` or ``26000 ... does not exist``.
So every statement of this package is sent unprepared (``prepare=False``, the
unnamed statement), whatever the caller's connection settings: a connection
with psycopg's defaults works through a pooler. A direct connection pays the
parse and plan of each call instead (tens of microseconds; bench workload 5,
"prepare=False vs prepare=True", and docs/integration.md).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar, Union

import psycopg
import sqlalchemy as sa
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from credits_db._calls import Call
from credits_db.errors import InvalidArgument, translate

T = TypeVar("T")

SyncConnection = Union[psycopg.Connection[Any], sa.Connection, sa.Engine]  # noqa: UP007
"""What the sync API accepts as ``conn``."""


_Connection = Union[psycopg.Connection[Any], psycopg.AsyncConnection[Any], sa.Connection]  # noqa: UP007


def _raise_translated(exc: Exception, *, may_have_committed: bool) -> None:
    translated = translate(exc, may_have_committed=may_have_committed)
    if translated is exc:
        raise exc
    raise translated from exc


def run(conn: SyncConnection, call: Call[T]) -> T:
    """Execute ``call`` and parse its single result value."""
    if isinstance(conn, sa.Engine):
        return _run_on_engine(conn, call)
    may_commit = _may_commit(conn)
    try:
        if isinstance(conn, sa.Connection):
            with _unprepared(conn):
                value = conn.exec_driver_sql(call.query, dict(call.params)).scalar_one()
        else:
            lock, cursor = _own_cursor(conn)
            with lock:
                row = cursor.execute(call.query, call.params, prepare=False).fetchone()
            assert row is not None
            value = row[0]
    except (psycopg.Error, sa.exc.DBAPIError) as exc:
        _raise_translated(exc, may_have_committed=may_commit)
        raise  # pragma: no cover - _raise_translated always raises
    return call.parse(value)


def _run_on_engine(engine: sa.Engine, call: Call[T]) -> T:
    """``call`` in a transaction of its own; a connection lost at COMMIT leaves it unknown."""
    with engine.connect() as connection:
        return _run_and_commit(connection, call)


def _run_and_commit(conn: psycopg.Connection[Any] | sa.Connection, call: Call[T]) -> T:
    """``call`` in the transaction it opens on ``conn`` (outside one), then COMMIT."""
    try:
        result = run(conn, call)  # in the transaction: cannot have committed
    except BaseException:
        # The server rolls back a transaction whose connection is gone.
        with suppress(psycopg.Error, sa.exc.DBAPIError):
            conn.rollback()
        raise
    with _commit_outcome_unknown():
        conn.commit()
    return result


@contextmanager
def _commit_outcome_unknown() -> Iterator[None]:
    """A connection lost at COMMIT leaves the outcome unknown (``ConnectionLost``)."""
    try:
        yield
    except (psycopg.Error, sa.exc.DBAPIError) as exc:
        _raise_translated(exc, may_have_committed=True)


def run_committed(conn: SyncConnection, call: Call[T], *, batched: str = "backfill_all",
                  single: str = "backfill") -> T:
    """Execute ``call`` in a transaction of its own, committed before this returns.

    An Engine, or a connection in autocommit mode and outside any transaction
    block, commits the statement by itself. A connection outside any transaction
    gets one around the call (BEGIN ... COMMIT). A connection inside a
    transaction is refused before anything is sent: committing there would
    commit the caller's own pending work, and not committing would hold every
    batch's rows and locks until the caller commits.

    ``batched`` and ``single`` name, in the refusal, the batched function that
    runs it and the one to call inside a transaction instead.

    Raises:
        InvalidArgument: ``conn`` is inside a transaction.
    """
    if isinstance(conn, sa.Engine) or _may_commit(conn):
        return run(conn, call)
    _refuse_open_transaction(conn, batched, single)
    return _run_and_commit(conn, call)


async def arun_committed(conn: psycopg.AsyncConnection[Any], call: Call[T], *,
                         batched: str = "backfill_all", single: str = "backfill") -> T:
    """:func:`run_committed` on an async psycopg connection."""
    if _may_commit(conn):
        return await arun(conn, call)
    _refuse_open_transaction(conn, batched, single)
    try:
        result = await arun(conn, call)
    except BaseException:
        with suppress(psycopg.Error):
            await conn.rollback()
        raise
    with _commit_outcome_unknown():
        await conn.commit()
    return result


def _refuse_open_transaction(conn: _Connection, batched: str, single: str) -> None:
    """InvalidArgument when ``conn`` is inside a transaction (the caller's, or a failed one)."""
    if isinstance(conn, sa.Connection):
        open_ = conn.in_transaction()
    else:
        open_ = conn.info.transaction_status in (TransactionStatus.INTRANS,
                                                 TransactionStatus.INERROR)
    if open_:
        raise InvalidArgument(
            f"{batched} commits each batch in a transaction of its own, so it needs a "
            "connection outside any transaction (autocommit, or commit or roll back first) "
            f"or a SQLAlchemy Engine; to join your transaction, use {single}()")


async def arun(conn: psycopg.AsyncConnection[Any], call: Call[T]) -> T:
    """Execute ``call`` on an async psycopg connection and parse its single result value."""
    may_commit = _may_commit(conn)
    try:
        lock, cursor = _own_async_cursor(conn)
        async with lock:
            await cursor.execute(call.query, call.params, prepare=False)
            row = await cursor.fetchone()
        assert row is not None
    except psycopg.Error as exc:
        _raise_translated(exc, may_have_committed=may_commit)
        raise  # pragma: no cover
    return call.parse(row[0])


@contextmanager
def _unprepared(conn: sa.Connection) -> Iterator[None]:
    """Nothing psycopg sends on ``conn``'s driver connection meanwhile is prepared.

    SQLAlchemy runs the statement (so its transaction state, autobegin, events
    and disconnect handling stay its own) but has no per-statement ``prepare``
    option: the driver connection's ``prepare_threshold`` is None for this one
    statement and restored after. Other drivers are left as they are.
    """
    driver = None if conn.closed or conn.invalidated else getattr(
        conn.connection, "driver_connection", None)
    if not isinstance(driver, psycopg.Connection | psycopg.AsyncConnection):
        yield
        return
    threshold = driver.prepare_threshold
    driver.prepare_threshold = None
    try:
        yield
    finally:
        driver.prepare_threshold = threshold


_OWN_CURSOR = "_credits_db_cursor"
"""The attribute under which a connection keeps this package's cursor."""

_OwnCursor = tuple[threading.Lock, psycopg.Cursor[tuple[Any, ...]]]
_OwnAsyncCursor = tuple[asyncio.Lock, psycopg.AsyncCursor[tuple[Any, ...]]]


def _own_cursor(conn: psycopg.Connection[Any]) -> _OwnCursor:
    """This package's tuple-row cursor on ``conn``, made on first use and kept there.

    A cursor of our own, so the caller's row factory (dict_row...) stays theirs.
    Kept, because a new cursor resolves its adapters again on its first execute:
    about 15 us of Python per call, a quarter of the wrapper's price over a raw
    prepared execute (bench workload 5, docs/performance.md). The lock stops two
    threads sharing the connection from interleaving execute and fetch on the
    one cursor; psycopg serialises their statements on the connection anyway.
    The connection and its cursor reference each other; the garbage collector
    frees the pair once the caller lets go of the connection.
    """
    own: _OwnCursor | None = getattr(conn, _OWN_CURSOR, None)
    if own is None:
        # Two threads racing here each get a pair of their own; the last one
        # stored is shared from then on. Either way no cursor is used by two.
        own = (threading.Lock(), conn.cursor(row_factory=tuple_row))
        setattr(conn, _OWN_CURSOR, own)
    return own


def _own_async_cursor(conn: psycopg.AsyncConnection[Any]) -> _OwnAsyncCursor:
    """:func:`_own_cursor` for an async connection (an asyncio lock: tasks, not threads)."""
    own: _OwnAsyncCursor | None = getattr(conn, _OWN_CURSOR, None)
    if own is None:
        own = (asyncio.Lock(), conn.cursor(row_factory=tuple_row))
        setattr(conn, _OWN_CURSOR, own)
    return own


def _may_commit(conn: _Connection) -> bool:
    """Whether a statement sent now on ``conn`` could commit by itself.

    Only in autocommit mode and outside a transaction block. A connection that
    is closed already sends nothing, so nothing can commit either.
    """
    driver: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None
    if isinstance(conn, sa.Connection):
        if conn.closed or conn.invalidated:
            return False
        driver = getattr(conn.connection, "driver_connection", None)
        if not isinstance(driver, psycopg.Connection | psycopg.AsyncConnection):
            return True  # another driver: assume the worst
    else:
        driver = conn
    if driver.closed:
        return False
    return driver.autocommit and driver.info.transaction_status == TransactionStatus.IDLE
