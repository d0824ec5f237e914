"""The test server and its throwaway databases (used by tests/conftest.py's fixtures).

A database's name is the configured prefix (``CREDITS_DB_TEST_PREFIX``, default
``credits_test_``; see credits_db.testing.database_prefix), then the process id, so
parallel workers (pytest-xdist: one process each) never pick the same name, and
suites sharing a server never touch each other's databases.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from credits_db import urls
from credits_db.testing import database_prefix

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

    def __init__(self, admin_url: str, prefix: str | None = None) -> None:
        self.admin_url = admin_url
        self.prefix = f"{prefix or database_prefix()}{os.getpid()}"

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
        """Drop a database this server made; any other name is refused."""
        if not database.name.startswith(f"{self.prefix}_"):
            raise ValueError(f"refusing to drop {database.name!r}: not a database of this "
                             f"test run (prefix {self.prefix}_)")
        self._admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database.name)
            )
        )
