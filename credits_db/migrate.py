"""Run the packaged Alembic migrations against a database.

Works from an installed wheel (no checkout, no alembic.ini needed). The
migrations record their state in their own table, ``credits_db_version``.
"""

from __future__ import annotations

import io
import logging

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from alembic import command
from credits_db import urls
from credits_db._resources import alembic_dir

VERSION_TABLE = "credits_db_version"


def _config(url: str | None, *, output: io.StringIO | None = None) -> Config:
    config = Config(output_buffer=output) if output is not None else Config()
    config.set_main_option("script_location", str(alembic_dir()))
    config.set_main_option("path_separator", "os")
    if url is not None:
        # Kept out of the ini options: a '%' in a URL-encoded password would be
        # read as configparser interpolation there.
        config.attributes["url"] = urls.to_sqlalchemy(url)
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (default: the newest)."""
    command.upgrade(_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``base`` removes credits-db)."""
    command.downgrade(_config(url), revision)


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at, or None when credits-db is not installed."""
    engine = sa.create_engine(urls.to_sqlalchemy(url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    finally:
        engine.dispose()


def head() -> str:
    """The newest revision this package ships."""
    script = ScriptDirectory.from_config(_config(None))
    revision = script.get_current_head()
    assert revision is not None
    return revision


def offline_sql(revision: str = "head", *, from_revision: str | None = None) -> str:
    """The upgrade as a plain SQL script (for psql or SQL-only migration tools)."""
    buffer = io.StringIO()
    config = _config(None, output=buffer)
    # env.py reads the URL for offline mode too; an offline script needs none.
    target = f"{from_revision}:{revision}" if from_revision else revision
    logging.getLogger("alembic").setLevel(logging.WARNING)
    command.upgrade(config, target, sql=True)
    return buffer.getvalue()
