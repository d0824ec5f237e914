"""``credits-db upgrade --backfill``: install, then backfill the existing users in batches
(issue 15 item 6: no gap between the upgrade and the backfill)."""

from __future__ import annotations

import json

from credits_db import migrate
from tests.support.cli import cli
from tests.support.databases import Database

HOST_USERS = "CREATE TABLE users (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), role text)"


def host_with_users(database: Database, *roles: str) -> None:
    with database.connect() as conn:
        conn.execute(HOST_USERS)
        conn.execute("INSERT INTO users (role) SELECT unnest(%s::text[])", (list(roles),))


def users_without_credits(database: Database) -> int:
    with database.connect() as conn:
        row = conn.execute("SELECT count(*) FROM users u WHERE NOT EXISTS "
                           "(SELECT 1 FROM user_credits c WHERE c.user_id = u.id)").fetchone()
    assert row is not None
    return int(row[0])


def test_upgrade_then_backfill_in_batches_with_progress(empty_db: Database) -> None:
    host_with_users(empty_db, *["member"] * 4, "team_admin")
    result = cli("upgrade", "--backfill", "--batch-size", "2", "--url", empty_db.url)
    assert result.returncode == 0, result.stderr
    assert f"credits-db is at revision {migrate.head()}" in result.stderr
    assert "backfill: users: 5 of 5 (100%)" in result.stderr
    assert "allocated 6400 credits to 5 users" in result.stdout
    assert "run credits-db backfill" not in result.stderr  # nobody is left waiting
    assert users_without_credits(empty_db) == 0


def test_upgrade_backfill_json_is_the_summary(empty_db: Database) -> None:
    host_with_users(empty_db, "admin", "member")
    result = cli("upgrade", "--backfill", "--json", "--url", empty_db.url)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["users_backfilled"], summary["credits_allocated"]) == (2, 1350)
    assert "backfill: users" not in result.stderr  # --json: no progress line


def test_upgrade_backfill_on_an_installed_database_backfills_the_rest(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
        conn.execute("INSERT INTO users (role) VALUES ('member'), ('member')")
        conn.execute("ALTER TABLE users ENABLE TRIGGER users_allocate_credits")
    result = cli("upgrade", "--backfill", "--url", db.url)
    assert result.returncode == 0, result.stderr
    assert users_without_credits(db) == 0


def test_upgrade_backfill_goes_to_head_only(empty_db: Database) -> None:
    result = cli("upgrade", "0003", "--backfill", "--url", empty_db.url)
    assert result.returncode == 2
    assert result.stderr == (f"credits-db: error: --backfill upgrades to head ({migrate.head()}), "
                             "not to 0003\n")
    assert migrate.current(empty_db.url) is None  # refused before anything ran
    bad = cli("upgrade", "--backfill", "--batch-size", "0", "--url", empty_db.url)
    assert bad.returncode == 2 and "--batch-size must be between" in bad.stderr
    alone = cli("upgrade", "--batch-size", "10", "--url", empty_db.url)
    assert alone.stderr == "credits-db: error: --batch-size goes with --backfill\n"
    assert migrate.current(empty_db.url) is None
