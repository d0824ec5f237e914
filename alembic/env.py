"""Alembic environment for credits-db.

The URL comes from, in order: a connection handed over by credits_db.migrate,
``-x url=...``, the URL credits_db.migrate was given, then ``DATABASE_URL``.
Plain libpq URLs (``postgresql://``) are accepted. The version table is
``credits_db_version``, so a host application's own Alembic history in the
same database is never touched.
"""

from __future__ import annotations

from logging.config import fileConfig

import sqlalchemy as sa

from alembic import context
from credits_db import urls
from credits_db.migrate import VERSION_TABLE

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str | None:
    given = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.attributes.get("url")
        or urls.from_environment()
    )
    return urls.to_sqlalchemy(given) if given else None


def run_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        dialect_name=None if url else "postgresql",
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        version_table=VERSION_TABLE,
        transactional_ddl=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    url = _url()
    if url is None:
        raise SystemExit(
            "credits-db: no database URL; set DATABASE_URL or pass -x url=postgresql://..."
        )
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            _run_with(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
