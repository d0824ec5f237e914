"""Revision 0003: its downgrade takes back what it granted and restores the 0002 functions."""

from __future__ import annotations

from credits_db import migrate
from tests.support.catalog import difference, fingerprint, without_kept_schema_usage
from tests.support.databases import Server
from tests.support.security import one


def test_downgrade_to_0002_restores_it_and_keeps_the_roles(server: Server) -> None:
    database = server.create()
    try:
        migrate.upgrade(database.url, "0002")
        migrate.upgrade(database.url, "0003")  # roles exist from here on
        migrate.downgrade(database.url, "0002")
        with database.connect() as conn:
            at_0002 = without_kept_schema_usage(fingerprint(conn))
            assert one(conn, "SELECT count(*) FROM pg_policy") == 0
            assert one(conn, "SELECT to_regprocedure('credits_current_user_id()')") is None
        fresh = server.create()
        try:
            migrate.upgrade(fresh.url, "0002")
            with fresh.connect() as conn:
                # Schema usage (schema public's ACL): PUBLIC's on both sides, the
                # roles' own grant gone; the API roles' direct USAGE is kept on
                # purpose (see without_kept_schema_usage).
                fresh_0002 = without_kept_schema_usage(fingerprint(conn))
                assert fresh_0002 == at_0002, difference(fresh_0002, at_0002)
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
            assert one(conn, "SELECT count(*) FROM pg_policy") == 7
            assert one(conn, "SELECT count(*) FROM verify_credit_integrity()") == 0
    finally:
        server.drop(database)
