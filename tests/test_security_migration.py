"""Revision 0003: its downgrade takes back what it granted and restores the 0002 functions."""

from __future__ import annotations

from typing import Any

from credits_db import migrate
from tests.conftest import Server
from tests.helpers import Conn
from tests.test_security_support import one

# Every function with its definition and privileges, every table's privileges
# (a NULL ACL read as the default it stands for), policies, row security flags.
FINGERPRINT = """
SELECT 'function', p.oid::regprocedure::text,
       pg_get_functiondef(p.oid) || coalesce(array_to_string(p.proacl, ','), '')
FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'acl', c.oid::regclass::text,
       array_to_string(coalesce(c.relacl, acldefault(CASE c.relkind WHEN 'S' THEN 's'::"char"
                                                    ELSE 'r'::"char" END, c.relowner)), ',')
FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'S')
  AND c.relname NOT LIKE 'credits_db_version%'
UNION ALL
SELECT 'policy', polrelid::regclass::text || '.' || polname, '' FROM pg_policy
UNION ALL
SELECT 'row security', c.oid::regclass::text, concat_ws(' ', relrowsecurity, relforcerowsecurity)
FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
UNION ALL
SELECT 'schema usage', r, has_schema_privilege(r, 'public', 'USAGE')::text
FROM unnest(ARRAY['credits_user', 'credits_admin']) r
ORDER BY 1, 2
"""


def fingerprint(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(FINGERPRINT).fetchall()


def test_downgrade_to_0002_restores_it_and_keeps_the_roles(server: Server) -> None:
    database = server.create()
    try:
        migrate.upgrade(database.url, "0002")
        migrate.upgrade(database.url, "0003")  # roles exist from here on
        migrate.downgrade(database.url, "0002")
        with database.connect() as conn:
            at_0002 = fingerprint(conn)
            assert one(conn, "SELECT count(*) FROM pg_policy") == 0
            assert one(conn, "SELECT to_regprocedure('credits_current_user_id()')") is None
        fresh = server.create()
        try:
            migrate.upgrade(fresh.url, "0002")
            with fresh.connect() as conn:
                # Schema usage: PUBLIC's, on both sides; the roles' own grant is gone.
                assert fingerprint(conn) == at_0002
        finally:
            server.drop(fresh)
        with database.connect() as conn:
            # Roles are cluster-wide: a downgrade never drops them.
            assert one(conn, "SELECT count(*) FROM pg_roles"
                             " WHERE rolname IN ('credits_user', 'credits_admin')") == 2
            conn.execute("INSERT INTO users (role) VALUES ('member')")
        migrate.upgrade(database.url)
        assert migrate.current(database.url) == migrate.head()
        with database.connect() as conn:
            assert one(conn, "SELECT count(*) FROM pg_policy") == 4
            assert one(conn, "SELECT count(*) FROM verify_credit_integrity()") == 0
    finally:
        server.drop(database)
