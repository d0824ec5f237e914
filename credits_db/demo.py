"""The demo data of ``credits-db demo`` and ``credits-db serve``, from one place.

Both demos tell the same story (:func:`install_with_users`): a host application's
``users`` table with one user per :data:`DEMO_ROLES`, who wait for the backfill;
credits-db installed; then one more user per role signing up, whom the trigger
allocates. ``credits-db demo`` goes on to backfill and report (:func:`run`);
``credits-db serve`` puts the ``member`` in the ``team_admin``'s pool (:func:`seed`)
and serves the database. The statements are in ``credits_db/demo.sql``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from credits_db import functions, migrate, urls
from credits_db._queries import parse
from credits_db.models import AllocationReport, BackfillSummary

DEMO_ROLES: tuple[str | None, ...] = (
    "member", "admin", "team_admin", "RecruitPro", "super_admin", None, "Recruiter",
)
"""One demo user per entry, before the install and again after it: every role of the
default allocations, a NULL role and an unknown role (these two get the member's)."""

_STATEMENTS = parse(files("credits_db").joinpath("demo.sql").read_text(encoding="utf-8"))

DemoUsers = list[tuple[str | None, UUID]]
"""Demo users as ``(role, id)`` pairs, in :data:`DEMO_ROLES` order."""


def _quiet(_message: str) -> None:
    """Report nothing (the default ``say``)."""


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def _add_users(conn: psycopg.Connection[Any], prefix: str) -> DemoUsers:
    rows = conn.execute(_STATEMENTS["add_users"],
                        {"roles": list(DEMO_ROLES), "prefix": prefix}).fetchall()
    return [(role, UUID(str(user_id))) for role, user_id in rows]


def install_with_users(conn: psycopg.Connection[Any], url: str,
                       say: Callable[[str], None] = _quiet) -> DemoUsers:
    """Create the host's users, install credits-db at ``url``, then sign more users up.

    ``conn`` (autocommit) is on the empty database at ``url``. ``say`` receives one
    line after each step. Returns the users who signed up after the install.
    """
    conn.execute(_STATEMENTS["create_host_users"])
    _add_users(conn, "before")
    say(f"created {len(DEMO_ROLES)} users before installing credits-db")
    migrate.upgrade(url)
    pending = functions.backfill(conn, dry_run=True)
    say(f"installed credits-db {migrate.current(url)}; "
        f"{pending.users_without_credits} users wait for the backfill")
    signed_up = _add_users(conn, "after")
    say(f"signed up {len(DEMO_ROLES)} users after installing (the trigger allocated)")
    return signed_up


@contextmanager
def _scratch_database(server_url: str) -> Iterator[str]:
    """A new database on the server at ``server_url`` (its URL), dropped afterwards."""
    name = f"credits_db_demo_{uuid.uuid4().hex[:8]}"
    with _connect(server_url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urls.with_database(server_url, name)
    finally:
        with _connect(server_url) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))


def run(server_url: str, say: Callable[[str], None] = _quiet
        ) -> tuple[BackfillSummary, AllocationReport]:
    """The ``credits-db demo`` story in a database of its own, dropped afterwards.

    Parameters:
        server_url: a libpq URL of a server where the caller may create databases.
        say: receives a line after each step (see :func:`install_with_users`).

    Returns:
        What the backfill did, and the allocation report after it.
    """
    with _scratch_database(server_url) as url, _connect(url) as conn:
        install_with_users(conn, url, say)
        return functions.backfill(conn), functions.allocation_report(conn)


def seed(url: str) -> dict[str, UUID]:
    """The ``credits-db serve`` data: install into the empty database at ``url``, with users.

    The demo users of :func:`install_with_users`; the ``member`` who signed up joins
    the ``team_admin``'s pool. Returns the ids of those who signed up, by role (the
    NULL role's user is left out).
    """
    with _connect(url) as conn:
        signed_up = install_with_users(conn, url)
        ids = {role: user_id for role, user_id in signed_up if role is not None}
        functions.add_team_member(conn, ids["team_admin"], ids["member"])
    return ids
