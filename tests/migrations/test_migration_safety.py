"""Upgrades keep every row: a database filled under an older revision, then upgraded."""

from __future__ import annotations

from typing import Any

from alembic.script import ScriptDirectory

from credits_db import migrate
from credits_db._resources import alembic_dir
from tests.support.databases import Database


def fingerprint(db: Database) -> dict[str, Any]:
    """Row counts and content hashes of every table holding credits data."""
    with db.connect() as conn:
        return {
            table: conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                f" FROM (SELECT {columns} FROM {table}) t"
            ).fetchone()
            for table, columns in {
                "users": "id, role",
                "user_credits": "user_id, total_credits, used_credits, created_at",
                "credit_usage_log": "id, user_id, amount, type, source, description, created_at",
            }.items()
        }


def revisions() -> list[str]:
    script = ScriptDirectory(str(alembic_dir()))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_each_revision_upgrades_a_filled_database_without_losing_rows(empty_db: Database) -> None:
    first, *later = revisions()
    migrate.upgrade(empty_db.url, first)
    with empty_db.connect() as conn:
        conn.execute("ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
        conn.execute("INSERT INTO users (role) SELECT (ARRAY['member','admin',NULL])[1 + g % 3]"
                     " FROM generate_series(1, 300) g")
        conn.execute("ALTER TABLE users ENABLE TRIGGER users_allocate_credits")
        conn.execute("SELECT backfill_user_credits(false, 200)")
        conn.execute("INSERT INTO users (role) VALUES ('team_admin'), ('super_admin')")
    for revision in later:
        before = fingerprint(empty_db)
        migrate.upgrade(empty_db.url, revision)
        assert fingerprint(empty_db) == before, revision
    with empty_db.connect() as conn:
        # The upgraded database still works on the old rows.
        summary = conn.execute("SELECT backfill_user_credits()").fetchone()
        assert summary is not None and summary[0]["users_backfilled"] == 100
        problems = conn.execute("SELECT * FROM verify_credit_integrity()").fetchall()
        assert problems == []


def test_downgrade_to_the_first_revision_keeps_ledger_rows(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("INSERT INTO users (role) VALUES ('member'), ('admin')")
    before = fingerprint(db)
    migrate.downgrade(db.url, revisions()[0])
    assert fingerprint(db) == before
    migrate.upgrade(db.url)
    assert fingerprint(db) == before
