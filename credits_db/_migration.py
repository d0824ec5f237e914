"""Helpers the Alembic revisions use to run their frozen SQL files.

A revision runs only the ``.sql`` file that sits beside it, never the current
definitions in ``sql/``: what has landed stays exactly what it was.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import sqlalchemy as sa

from alembic import context, op

log = logging.getLogger("alembic.runtime.migration")

# SQLAlchemy's text() reads ":name" as a bind parameter. PL/pgSQL is full of
# "::type" casts and ":=" assignments, which it leaves alone; any other colon is
# escaped so a function body reaches the server byte for byte, online and in
# the offline (--sql) script alike.
_BIND_LIKE_COLON = re.compile(r"(?<![:\\]):(?=\w)")


def escape_for_text(sql: str) -> str:
    """Escape every colon that SQLAlchemy's ``text()`` would take for a bind parameter."""
    return _BIND_LIKE_COLON.sub(r"\\:", sql)


def run_sql_file(path: Path) -> None:
    """Run one frozen SQL file in the current migration transaction."""
    # Objects are created in public whatever the installer's search_path says.
    op.execute(sa.text("SET LOCAL search_path = public"))
    op.execute(sa.text(escape_for_text(path.read_text(encoding="utf-8"))))


def is_offline() -> bool:
    """True while rendering an offline (``--sql``) script: there is no database to ask."""
    return context.is_offline_mode()


def log_users_waiting_for_backfill() -> None:
    """Tell the operator how many existing users the backfill will allocate (if any)."""
    if is_offline():
        return
    waiting = op.get_bind().execute(
        sa.text("SELECT count(*) FROM public.credits_backfill_candidates")
    ).scalar_one()
    if not waiting:
        return  # a fresh database: nothing to say
    log.info(
        "credits-db: %s existing user(s) have no credits yet; "
        "run SELECT backfill_user_credits() (or `credits-db backfill`) when ready",
        waiting,
    )


def warn_if_public_schema_is_writable() -> None:
    """Warn when PUBLIC may CREATE in schema public (the default before PostgreSQL 15).

    credits-db's functions resolve every name past whatever is created there,
    but such a schema lets any role plant objects next to the host's own.
    """
    if is_offline():
        return
    writable = op.get_bind().execute(
        sa.text("SELECT pg_catalog.has_schema_privilege('public', 'public', 'CREATE')")
    ).scalar_one()
    if writable:
        log.warning(
            "credits-db: PUBLIC may CREATE in schema public; credits-db's functions are not "
            "affected, but revoke it unless every role is trusted: "
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC"
        )
