"""Revision 0002: frozen SQL matches sql/010+, downgrade removes exactly what it added, function hygiene."""

from __future__ import annotations

from pathlib import Path

from credits_db import migrate
from tests.support.catalog import difference, fingerprint
from tests.support.databases import Server
from tests.support.helpers import Conn

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "alembic" / "versions"

FUNCTIONS = [
    "add_team_member(uuid,uuid)",
    "remove_team_member(uuid,uuid)",
    "debit_credits(uuid,integer,text,text,text)",
    "grant_credits(uuid,integer,text,text,text,timestamptz,integer)",
    "refund_credits(bigint,text)",
    "get_credit_balance(uuid)",
    "verify_credit_integrity()",
    "credits_internal.replayed_result(credit_usage_log,integer)",
    "credits_internal.topup_on_role_change()",
]


def test_functions_are_definer_with_fixed_search_path_revoked_and_commented(conn: Conn) -> None:
    for signature in FUNCTIONS:
        secdef, config, public_can, comment = conn.execute(
            "SELECT p.prosecdef, p.proconfig,"
            " has_function_privilege('public', p.oid, 'EXECUTE'),"
            " obj_description(p.oid, 'pg_proc')"
            " FROM pg_proc p WHERE p.oid = %s::regprocedure",
            (signature,),
        ).fetchone() or (None, None, None, None)
        assert secdef is True, signature
        assert config == ["search_path=pg_catalog, pg_temp"], signature
        assert public_can is False, signature
        assert comment, signature


def test_downgrade_removes_exactly_what_0002_added(server: Server) -> None:
    database = server.create()
    try:
        migrate.upgrade(database.url, "0001")
        with database.connect() as conn:
            at_0001 = fingerprint(conn)
        migrate.upgrade(database.url, "0002")
        with database.connect() as conn:
            assert fingerprint(conn) != at_0001
            conn.execute("INSERT INTO users (role) VALUES ('member')")
        migrate.downgrade(database.url, "0001")
        with database.connect() as conn:
            after = fingerprint(conn)
            assert after == at_0001, difference(at_0001, after)
        migrate.upgrade(database.url, "head")
        assert migrate.current(database.url) == migrate.head()
    finally:
        server.drop(database)
