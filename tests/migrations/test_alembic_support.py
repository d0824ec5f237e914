"""A host application's own Alembic next to credits-db (issue 15 item 4).

The host has its own ``users`` model and migrations; credits-db is installed into the
same database. With credits_db.alembic_support's two filters in the host's env.py,
autogenerate proposes nothing; without them it proposes dropping credits-db's tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from credits_db import migrate
from credits_db.alembic_support import (
    FORMER_TABLES,
    INTERNAL_SCHEMA,
    OWNED_TABLES,
    OWNED_VIEWS,
    include_name,
    include_object,
    owns,
)
from tests.support.databases import Database

ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = %(here)s
path_separator = os
"""

# The three lines of docs/install.md: the import and the two keyword arguments.
ENV_PY = """\
import os

import sqlalchemy as sa
from alembic import context

from credits_db.alembic_support import include_name, include_object
from host_models import Base

use_filter = context.get_x_argument(as_dictionary=True).get("credits_filter", "on") == "on"
filters = {"include_name": include_name, "include_object": include_object} if use_filter else {}
engine = sa.create_engine(os.environ["HOST_DATABASE_URL"], poolclass=sa.pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      include_schemas=True, **filters)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""

# The host's model of its users: what sql/002_users.sql expects (id uuid PRIMARY KEY,
# role text) and columns of the host's own.
MODELS_PY = """\
import datetime
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True,
                                          server_default=sa.text("gen_random_uuid()"))
    email: Mapped[str] = mapped_column(sa.Text, unique=True)
    role: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=True),
                                                          server_default=sa.func.now())
"""

HOST_REVISION = """\
import sqlalchemy as sa
from alembic import op

revision = "h001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("email", sa.Text(), nullable=False, unique=True),
        sa.Column("role", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )
"""


def host_project(root: Path) -> Path:
    """A host application's Alembic project under ``root``; returns its alembic.ini."""
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "alembic.ini").write_text(ALEMBIC_INI)
    (root / "migrations" / "env.py").write_text(ENV_PY)
    (root / "migrations" / "versions" / "h001_users.py").write_text(HOST_REVISION)
    (root / "host_models.py").write_text(MODELS_PY)
    return root / "alembic.ini"


def host_alembic(ini: Path, database: Database, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environment["HOST_DATABASE_URL"] = database.url.replace("postgresql://",
                                                            "postgresql+psycopg://", 1)
    return subprocess.run([sys.executable, "-m", "alembic", "-c", str(ini), *args],
                          capture_output=True, text=True, env=environment, timeout=240)


def test_host_autogenerate_proposes_nothing_with_the_filters(tmp_path: Path,
                                                             empty_db: Database) -> None:
    ini = host_project(tmp_path / "host")
    created = host_alembic(ini, empty_db, "upgrade", "head")
    assert created.returncode == 0, created.stderr
    migrate.upgrade(empty_db.url)  # credits-db beside the host's users

    checked = host_alembic(ini, empty_db, "check")
    assert checked.returncode == 0, checked.stderr
    assert "No new upgrade operations detected." in checked.stdout

    # The negative control: the same project without the filters wants credits-db gone.
    unfiltered = host_alembic(ini, empty_db, "-x", "credits_filter=off", "check")
    assert unfiltered.returncode != 0
    said = unfiltered.stdout + unfiltered.stderr  # alembic prints its FAILED line on stdout
    assert "New upgrade operations detected" in said
    for table in OWNED_TABLES:
        assert f"('remove_table', Table('{table}'" in said, table
    assert "Table('users'" not in said  # the host's table, in the model


def relations(database: Database, kinds: tuple[str, ...]) -> set[tuple[str, str]]:
    with database.connect() as conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = ANY(%s::\"char\"[])"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
            (list(kinds),)).fetchall()
    return {(schema, name) for schema, name in rows}


def test_the_owned_names_are_what_upgrade_head_creates(db: Database) -> None:
    """Catalog after ``upgrade head``: a later revision's new table must be listed."""
    tables = relations(db, ("r", "p", "f", "m"))
    assert {name for schema, name in tables if schema == "public"} == OWNED_TABLES | {"users"}
    assert {name for schema, name in relations(db, ("v",)) if schema == "public"} == OWNED_VIEWS
    assert not FORMER_TABLES & {name for _schema, name in tables}  # gone at head
    # Anything else lives in credits-db's own schema, which the filters hide whole.
    schemas = {schema for schema, _name in tables | relations(db, ("v", "S"))}
    assert schemas <= {"public", INTERNAL_SCHEMA}
    with db.connect() as conn:
        row = conn.execute("SELECT array_agg(nspname::text ORDER BY nspname) FROM "
                           "pg_catalog.pg_namespace WHERE nspname !~ '^pg_' "
                           "AND nspname <> 'information_schema'").fetchone()
    assert row is not None and row[0] == [INTERNAL_SCHEMA, "public"]


def test_the_filters_never_hide_the_hosts_tables() -> None:
    metadata = sa.MetaData()
    users = sa.Table("users", metadata, sa.Column("id", sa.Uuid, primary_key=True),
                     sa.Column("email", sa.Text, index=True))
    ledger = sa.Table("credit_usage_log", metadata, sa.Column("id", sa.BigInteger))
    internal = sa.Table("anything", metadata, sa.Column("x", sa.Text), schema=INTERNAL_SCHEMA)
    elsewhere = sa.Table("user_credits", metadata, sa.Column("x", sa.Text), schema="billing")
    assert include_name("users", "table", {"schema_name": None})
    assert include_name("users", "table", {"schema_name": "public"})
    assert not include_name("credit_usage_log", "table", {"schema_name": None})
    assert not include_name("anything", "table", {"schema_name": INTERNAL_SCHEMA})
    assert not include_name(INTERNAL_SCHEMA, "schema", {})
    assert include_name("public", "schema", {})
    assert include_object(users, "users", "table", False, None)
    assert include_object(users.c.email, "email", "column", False, None)
    assert not include_object(ledger, "credit_usage_log", "table", True, None)
    assert not include_object(ledger.c.id, "id", "column", True, None)
    assert not include_object(internal, "anything", "table", True, None)
    # A host's table of the same name in a schema of its own is the host's.
    assert include_object(elsewhere, "user_credits", "table", False, None)
    # A database still at a revision before 0008 has its install record in public.
    assert not include_name("credits_db_install", "table", {"schema_name": None})
    assert owns("credits_backfill_candidates") and owns("credits_db_version", "public")
    assert not owns("users") and not owns("users", "public")
