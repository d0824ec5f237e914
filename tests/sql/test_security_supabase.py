"""Supabase: auth.uid() is the identity, authenticated and service_role get the credits roles,
and Supabase's default grants to its API roles are taken back from credits-db's objects."""

from __future__ import annotations

import psycopg

from credits_db import migrate
from tests.support.databases import Database
from tests.support.helpers import add_users, balance
from tests.support.security import DEBIT, GRANT, ensure_role, one, refused

API_ROLES = ("anon", "authenticated", "service_role")

SUPABASE = """
CREATE SCHEMA auth;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
-- What a Supabase project does for every object created in public.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
"""

# Roles are cluster-wide: another test database may have granted these
# memberships already. Taking them back first makes this test see what its own
# install does (another session installing at the same moment grants them too).
FORGET_MEMBERSHIPS = """
DO $forget$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'credits_user')
       AND pg_has_role('authenticated', 'credits_user', 'MEMBER') THEN
        REVOKE credits_user FROM authenticated;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'credits_admin')
       AND pg_has_role('service_role', 'credits_admin', 'MEMBER') THEN
        REVOKE credits_admin FROM service_role;
    END IF;
END $forget$
"""


def as_jwt(conn: psycopg.Connection[tuple[object, ...]], role: str, sub: str | None) -> None:
    conn.execute(f"SET ROLE {role}")
    conn.execute("SELECT set_config('request.jwt.claim.sub', %s, false)", (sub or "",))


def test_supabase_install(empty_db: Database) -> None:
    with empty_db.connect() as conn:
        for role in API_ROLES:
            # NOINHERIT, as Supabase creates them (unless another test made them first).
            ensure_role(conn, role, inherit=False)
        conn.execute(FORGET_MEMBERSHIPS)
        conn.execute(SUPABASE)
    migrate.upgrade(empty_db.url)

    with empty_db.connect() as conn:
        assert one(conn, "SELECT pg_has_role('authenticated', 'credits_user', 'MEMBER')")
        assert one(conn, "SELECT pg_has_role('service_role', 'credits_admin', 'MEMBER')")
        assert not one(conn, "SELECT pg_has_role('authenticated', 'credits_admin', 'MEMBER')")
        assert not one(conn, "SELECT pg_has_role('anon', 'credits_user', 'MEMBER')")

        # Supabase's default privileges handed ALL to the API roles; all taken back.
        for role in API_ROLES:
            for table in ("user_credits", "credit_usage_log", "team_credit_sharing",
                          "role_credits", "credits_internal.install_record"):
                for write in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"):
                    assert not one(conn, "SELECT has_table_privilege(%s, %s, %s)",
                                   (role, table, write)), (role, table, write)
        assert not one(conn, "SELECT has_function_privilege('anon', %s, 'EXECUTE')", (DEBIT,))
        for function in ("backfill_user_credits_batch(uuid,integer)",
                         "credits_internal.backfill(boolean,integer,boolean,uuid)"):
            assert not one(conn, "SELECT has_function_privilege('authenticated', %s, 'EXECUTE')",
                           (function,)), function
        assert one(conn, "SELECT has_function_privilege('service_role', %s, 'EXECUTE')",
                   ("backfill_user_credits_batch(uuid,integer)",))
        # NOINHERIT or not, the memberships carry the privileges (WITH INHERIT TRUE on
        # PostgreSQL 16+, direct grants on 15).
        assert one(conn, "SELECT has_function_privilege('authenticated', %s, 'EXECUTE')", (DEBIT,))
        assert one(conn, "SELECT has_function_privilege('service_role', %s, 'EXECUTE')", (GRANT,))
        assert one(conn, "SELECT has_table_privilege('authenticated', 'user_credits', 'SELECT')")
        assert not one(conn, "SELECT has_function_privilege('authenticated', %s, 'EXECUTE')",
                       (GRANT,))

        me, other = add_users(conn, "member", "member")

        # The identity is auth.uid(), whatever credits.user_id says.
        conn.execute("SELECT set_config('credits.user_id', %s, false)", (other,))
        as_jwt(conn, "authenticated", me)
        assert str(one(conn, "SELECT credits_current_user_id()")) == me
        assert one(conn, "SELECT debit_credits(%s, 25)", (me,))["remaining_credits"] == 325
        refused(conn, "SELECT debit_credits(%s, 25)", (other,))
        refused(conn, "SELECT grant_credits(%s, 1000)", (me,))
        refused(conn, "TRUNCATE user_credits")
        refused(conn, "INSERT INTO credit_usage_log (user_id, amount, type, source)"
                      " VALUES (%s, 1000, 'credit', 'forged')", (me,))
        assert [r[0] for r in conn.execute("SELECT user_id::text FROM user_credits")] == [me]

        as_jwt(conn, "anon", None)
        refused(conn, "SELECT debit_credits(%s, 1)", (me,))
        refused(conn, "SELECT * FROM user_credits")

        as_jwt(conn, "service_role", None)
        assert one(conn, "SELECT grant_credits(%s, 100)", (other,))["remaining_credits"] == 450
        assert one(conn, "SELECT count(*) FROM user_credits") == 2

        conn.execute("RESET ROLE")
        assert balance(conn, me) == (350, 25, 325)
        assert balance(conn, other) == (450, 0, 450)
