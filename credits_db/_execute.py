"""Run a :class:`Call` on whatever connection the caller has.

Accepted: a psycopg ``Connection`` or ``AsyncConnection``, a SQLAlchemy
``Connection`` or ``Engine``. A connection joins the caller's transaction (the
caller commits, or uses autocommit); an Engine gets its own transaction,
committed before the call returns.
"""

from __future__ import annotations

from typing import Any, TypeVar, Union

import psycopg
import sqlalchemy as sa

from credits_db._calls import Call
from credits_db.errors import ConnectionLost, translate

T = TypeVar("T")

SyncConnection = Union[psycopg.Connection[Any], sa.Connection, sa.Engine]  # noqa: UP007
"""What the sync API accepts as ``conn``."""


_Connection = Union[psycopg.Connection[Any], psycopg.AsyncConnection[Any], sa.Connection]  # noqa: UP007


def _raise_translated(exc: Exception, conn: _Connection) -> None:
    translated = translate(exc)
    if isinstance(translated, ConnectionLost) and not _autocommit(conn):
        # Inside an uncommitted transaction the server rolls back when the
        # connection drops: nothing of this call can have been committed.
        translated.outcome_unknown = False
    if translated is exc:
        raise exc
    raise translated from exc


def run(conn: SyncConnection, call: Call[T]) -> T:
    """Execute ``call`` and parse its single result value."""
    if isinstance(conn, sa.Engine):
        with conn.begin() as connection:
            return run(connection, call)
    try:
        if isinstance(conn, sa.Connection):
            value = conn.exec_driver_sql(call.query, dict(call.params)).scalar_one()
        else:
            row = conn.execute(call.query, call.params).fetchone()
            assert row is not None
            value = row[0]
    except (psycopg.Error, sa.exc.DBAPIError) as exc:
        _raise_translated(exc, conn)
        raise  # pragma: no cover - _raise_translated always raises
    return call.parse(value)


async def arun(conn: psycopg.AsyncConnection[Any], call: Call[T]) -> T:
    """Execute ``call`` on an async psycopg connection and parse its single result value."""
    try:
        cursor = await conn.execute(call.query, call.params)
        row = await cursor.fetchone()
        assert row is not None
    except psycopg.Error as exc:
        _raise_translated(exc, conn)
        raise  # pragma: no cover
    return call.parse(row[0])


def _autocommit(conn: _Connection) -> bool:
    if isinstance(conn, sa.Connection):
        driver = getattr(conn.connection, "driver_connection", None)
        return bool(getattr(driver, "autocommit", False))
    return conn.autocommit
