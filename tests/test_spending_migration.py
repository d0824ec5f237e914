"""Revision 0002: frozen SQL matches sql/010+, downgrade removes exactly what it added, function hygiene."""

from __future__ import annotations

from pathlib import Path

from credits_db import migrate
from tests.conftest import Server
from tests.helpers import Conn

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ROOT / "alembic" / "versions"

FUNCTIONS = [
    "add_team_member(uuid,uuid)",
    "remove_team_member(uuid,uuid)",
    "debit_credits(uuid,integer,text,text,text)",
    "grant_credits(uuid,integer,text,text,text)",
    "refund_credits(bigint,text)",
    "get_credit_balance(uuid)",
    "verify_credit_integrity()",
    "credits_internal.replayed_result(credit_usage_log)",
    "credits_topup_on_role_change()",
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


def _schema(conn: Conn) -> list[tuple[object, ...]]:
    return conn.execute(
        """
        SELECT 'rel', c.relname, c.relkind::text FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'col', attrelid::regclass::text, attname FROM pg_attribute
        WHERE attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)
          AND attnum > 0 AND NOT attisdropped
        UNION ALL
        SELECT 'fn', p.oid::regprocedure::text, '' FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'con', conname, conrelid::regclass::text FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'trg', tgname, tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal
        ORDER BY 1, 2, 3
        """
    ).fetchall()


def test_downgrade_removes_exactly_what_0002_added(server: Server) -> None:
    database = server.create()
    try:
        migrate.upgrade(database.url, "0001")
        with database.connect() as conn:
            at_0001 = _schema(conn)
        migrate.upgrade(database.url, "0002")
        with database.connect() as conn:
            assert _schema(conn) != at_0001
            conn.execute("INSERT INTO users (role) VALUES ('member')")
        migrate.downgrade(database.url, "0001")
        with database.connect() as conn:
            assert _schema(conn) == at_0001
        migrate.upgrade(database.url, "head")
        assert migrate.current(database.url) == migrate.head()
    finally:
        server.drop(database)
