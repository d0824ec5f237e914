"""The database side of the HTTP API: the pool it takes and the reads it adds.

The reads are loaded from ``credits_db/http/queries.sql``, as :mod:`credits_db._queries`
loads ``queries.sql``.
"""

from importlib.resources import files
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool

from credits_db._calls import Call
from credits_db._queries import parse

Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]
"""The pool type :func:`~credits_db.http.create_router` takes (autocommit connections
recommended)."""

QUERIES = parse(files("credits_db.http").joinpath("queries.sql").read_text(encoding="utf-8"))
"""The reads the HTTP API adds (``credits_db/http/queries.sql``)."""


def team_member_limit(user_id: UUID) -> Call[int]:
    """How many members the user's role allows in their pool (0 for a missing user)."""
    return Call(QUERIES["team_member_limit"], {"user_id": str(user_id)}, int)


def is_team_member(team_admin_id: UUID, team_member_id: UUID) -> Call[bool]:
    """Whether ``team_member_id`` is in ``team_admin_id``'s pool now."""
    return Call(QUERIES["is_team_member"], {"team_admin_id": str(team_admin_id),
                                            "team_member_id": str(team_member_id)}, bool)
