"""Real PostgreSQL for every test.

One server per session (see credits_db.testing for how it is chosen). A template
database is migrated once; each test that wants an installed schema gets its own
copy (CREATE DATABASE ... TEMPLATE), so tests never share state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from credits_db import migrate
from credits_db.testing import database_prefix, provide_server
from tests.support.databases import Database, Server


def pytest_configure(config: pytest.Config) -> None:
    """A bad CREDITS_DB_TEST_PREFIX stops the run in one line, before any test."""
    try:
        database_prefix()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    with provide_server() as admin_url:
        yield Server(admin_url)


@pytest.fixture(scope="session")
def installed_template(server: Server) -> Iterator[Database]:
    template = server.create()
    migrate.upgrade(template.url)
    yield template
    server.drop(template)


@pytest.fixture
def empty_db(server: Server) -> Iterator[Database]:
    """A database without credits-db (and without a users table)."""
    database = server.create()
    yield database
    server.drop(database)


@pytest.fixture
def db(server: Server, installed_template: Database) -> Iterator[Database]:
    """A database with credits-db installed at head and no users."""
    database = server.create(template=installed_template.name)
    yield database
    server.drop(database)


@pytest.fixture
def conn(db: Database) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection to ``db``."""
    with db.connect() as connection:
        yield connection
