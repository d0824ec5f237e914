"""Every revision's downgrade restores its predecessor exactly, on a database holding data.

For each revision r: a database at r's predecessor, holding data written with
what that revision has (host users before 0001; allocations, backfills, team
pools, debits, keys and refunds once they exist), has the same catalog
fingerprint and the same rows after ``upgrade r`` then ``downgrade`` back; and
``upgrade r`` works again afterwards. The databases at each revision are built
once, step by step, and copied per test (CREATE DATABASE ... TEMPLATE).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.script import Script, ScriptDirectory
from psycopg import sql

from credits_db import migrate
from credits_db._resources import alembic_dir
from tests.support.catalog import Row, difference, fingerprint, without_kept_schema_usage
from tests.support.databases import Database, Server
from tests.support.helpers import Conn

BASE = "base"

REVISIONS: list[Script] = list(reversed(list(ScriptDirectory(str(alembic_dir())).walk_revisions())))


def predecessor(script: Script) -> str:
    """The revision ``script`` revises (``base`` for the first)."""
    down = script.down_revision or BASE
    assert isinstance(down, str), "one line of revisions: each has one predecessor"
    return down


def _user(email: str) -> str:
    return f"(SELECT id FROM users WHERE email = '{email}')"


# What each revision adds to the data, written once the database is at that
# revision and only with what exists there. A revision without an entry adds
# nothing (the rows written before it are still there).
DATA: dict[str, list[str]] = {
    BASE: [
        "CREATE TABLE users (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
        " email text, role text, signup_source text)",
        "INSERT INTO users (email, role) VALUES ('m1@x', 'member'), ('a1@x', 'admin'),"
        " ('t1@x', 'team_admin'), ('n1@x', NULL), ('u1@x', 'unknown')",
    ],
    "0001": [
        # Some of the users who were there before are backfilled, some wait.
        "SELECT backfill_user_credits(false, 3)",
        "INSERT INTO users (email, role) VALUES ('t2@x', 'team_admin'), ('m2@x', 'member'),"
        " ('m3@x', 'member'), ('s2@x', 'super_admin'), ('r2@x', 'RecruitPro')",
    ],
    "0002": [
        f"SELECT add_team_member({_user('t2@x')}, {_user('m2@x')})",
        f"SELECT add_team_member({_user('t2@x')}, {_user('m3@x')})",
        f"SELECT debit_credits({_user('m2@x')}, 100)",
        f"SELECT debit_credits({_user('m2@x')}, 300, 'usage', 'from the pool')",
        f"SELECT debit_credits({_user('m3@x')}, 20, 'search', 'keyed', 'req-1')",
        f"SELECT debit_credits({_user('m3@x')}, 20, 'search', 'keyed', 'req-1')",  # a replay
        f"SELECT grant_credits({_user('a1@x')}, 50, 'promo', NULL, 'grant-1')",
        "SELECT refund_credits((SELECT min(id) FROM credit_usage_log WHERE type = 'debit'),"
        " 'refunded')",
        "UPDATE users SET role = 'admin' WHERE email = 'm3@x'",  # role-change top-up
    ],
    "0003": [
        # A credits_user spending its own credits, as an application would.
        "BEGIN",
        f"SELECT set_config('credits.user_id', {_user('m2@x')}::text, true)",
        "SET LOCAL ROLE credits_user",
        "SELECT debit_credits(current_setting('credits.user_id')::uuid, 5, 'usage', 'self',"
        " 'self-1')",
        "COMMIT",
    ],
    "0004": [
        "SELECT backfill_user_credits_batch(NULL, 2)",
        "ALTER TABLE users DISABLE TRIGGER users_allocate_credits",
        "INSERT INTO users (email, role) VALUES ('w4@x', 'member')",
        "ALTER TABLE users ENABLE TRIGGER users_allocate_credits",
    ],
    "0005": [
        f"SELECT debit_credits({_user('m2@x')}, 400, 'usage', 'keyed pool', 'req-2')",
    ],
    "0006": [
        f"SELECT grant_credits({_user('m2@x')}, 10, 'promo', NULL, 'grant-2')",
        f"SELECT remove_team_member({_user('t2@x')}, {_user('m3@x')})",
    ],
    "0009": [
        # A signup whose allocation fails, recorded and waiting for the backfill.
        "ALTER TABLE credit_usage_log ADD CONSTRAINT data_refuse_signup CHECK (source <> 'signup') NOT VALID",
        "INSERT INTO users (email, role) VALUES ('f9@x', 'member')",
        "ALTER TABLE credit_usage_log DROP CONSTRAINT data_refuse_signup",
    ],
}


def _write_data(database: Database, revision: str) -> None:
    with database.connect() as conn:
        for statement in DATA.get(revision, []):
            conn.execute(statement.encode())


def _contents(conn: Conn) -> dict[str, tuple[int, str]]:
    """Row count and a hash of every row, per table of credits-db and the host."""
    tables = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('public', 'credits_internal')"
        " AND c.relkind = 'r' AND c.relname <> 'credits_db_version' ORDER BY 1, 2"
    ).fetchall()
    contents: dict[str, tuple[int, str]] = {}
    for schema, table in tables:
        row = conn.execute(
            sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                    " FROM {} t").format(sql.Identifier(schema, table))
        ).fetchone()
        assert row is not None
        contents[f"{schema}.{table}"] = (row[0], row[1])
    return contents


@pytest.fixture(scope="module")
def at_revision(server: Server) -> Iterator[dict[str, Database]]:
    """A template database at every revision but the newest, each holding the data so far."""
    chain = server.create()
    snapshots: dict[str, Database] = {}
    try:
        _write_data(chain, BASE)
        for script in REVISIONS:
            snapshots[predecessor(script)] = server.create(template=chain.name)
            migrate.upgrade(chain.url, script.revision)
            _write_data(chain, script.revision)
        yield snapshots
    finally:
        for database in (chain, *snapshots.values()):
            server.drop(database)


def _compared(rows: list[Row], revision: str) -> list[Row]:
    # See without_kept_schema_usage: 0003's downgrade keeps that on purpose.
    return without_kept_schema_usage(rows) if revision == "0003" else rows


@pytest.mark.parametrize("script", REVISIONS, ids=[s.revision for s in REVISIONS])
def test_downgrade_restores_the_previous_revision(server: Server,
                                                  at_revision: dict[str, Database],
                                                  script: Script) -> None:
    previous = predecessor(script)
    database = server.create(template=at_revision[previous].name)
    try:
        with database.connect() as conn:
            catalog_before, rows_before = _compared(fingerprint(conn), script.revision), _contents(conn)
        migrate.upgrade(database.url, script.revision)
        migrate.downgrade(database.url, previous)
        with database.connect() as conn:
            catalog_after, rows_after = _compared(fingerprint(conn), script.revision), _contents(conn)
        assert catalog_after == catalog_before, difference(catalog_before, catalog_after)
        assert rows_after == rows_before
        migrate.upgrade(database.url, script.revision)
        assert migrate.current(database.url) == script.revision
    finally:
        server.drop(database)
