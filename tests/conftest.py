"""Real PostgreSQL for every test.

One server per session (see credits_db.testing for how it is chosen). A template
database is migrated once; each test that wants an installed schema gets its own
copy (CREATE DATABASE ... TEMPLATE), so tests never share state.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from credits_db import migrate, urls
from credits_db.testing import provide_server

_counter = itertools.count()


@dataclass(frozen=True)
class Database:
    """A throwaway database on the test server."""

    name: str
    url: str

    def connect(self, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
        """A new connection (autocommit by default: each statement commits)."""
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.url, **kwargs)


class Server:
    """The session's PostgreSQL server, able to create and drop databases."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.prefix = f"credits_test_{os.getpid()}"

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)

    def create(self, *, template: str | None = None) -> Database:
        name = f"{self.prefix}_{next(_counter)}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        self._admin(statement)
        return Database(name, urls.with_database(self.admin_url, name))

    def drop(self, database: Database) -> None:
        self._admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database.name)
            )
        )


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
