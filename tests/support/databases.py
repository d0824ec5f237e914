"""The test server and its throwaway databases (used by tests/conftest.py's fixtures).

A database's name holds the process id, so parallel workers (pytest-xdist: one
process each) never pick the same name on a shared server.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from credits_db import urls

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
