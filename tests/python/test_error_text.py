"""What ``str()`` of a credits-db exception says: the message, the SQL DETAIL and HINT."""

from __future__ import annotations

from uuid import uuid4

import psycopg
import pytest

import credits_db
from credits_db import aio, errors
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users


def test_str_keeps_the_detail_of_the_database(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    with pytest.raises(credits_db.InsufficientCredits) as excinfo:
        credits_db.debit(conn, user, 351, source="search")
    assert excinfo.value.detail == "own remaining 350; team pool none (not in a team)"
    assert str(excinfo.value) == (
        "insufficient credits: 351 requested (DETAIL: own remaining 350; team pool none "
        "(not in a team))")


def test_str_without_detail_is_the_message() -> None:
    assert str(credits_db.UnknownUser()) == "No such user."
    assert str(credits_db.InvalidArgument("bad", hint="try again")) == "bad (HINT: try again)"


def test_a_database_without_credits_db_raises_not_installed(empty_db: Database) -> None:
    with empty_db.connect() as conn, pytest.raises(credits_db.NotInstalled) as excinfo:
        credits_db.allocation_report(conn)
    assert excinfo.value.sqlstate_received == "42883"
    assert isinstance(excinfo.value.__cause__, psycopg.errors.UndefinedFunction)
    assert str(excinfo.value) == (
        "credits-db is not installed in this database: run credits-db upgrade "
        "(DETAIL: function public.credit_allocation_report() does not exist)")


async def _async_balance(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
        await aio.balance(aconn, uuid4())


def test_the_async_api_raises_not_installed_too(empty_db: Database) -> None:
    import asyncio

    with pytest.raises(credits_db.NotInstalled, match="not installed"):
        asyncio.run(_async_balance(empty_db.url))


def test_a_missing_table_is_not_installed_too() -> None:
    translated = errors.translate(psycopg.errors.UndefinedTable(
        'relation "public.credit_usage_log" does not exist'))
    assert type(translated) is credits_db.NotInstalled
