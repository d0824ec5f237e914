"""Fixtures of the command-line tests: a cluster with pg_cron for ``credits-db schedule``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from credits_db import migrate
from tests.support import pgcron
from tests.support.databases import Database, Server


@pytest.fixture(scope="module")
def pgcron_server() -> Iterator[pgcron.PgCronServer]:
    """A throwaway PostgreSQL 15 with pg_cron preloaded (tests/support/pgcron.py): skipped
    with the reason where it is not installed, failed instead when CI requires it."""
    with pgcron.running() as running:
        yield running


@pytest.fixture(scope="module")
def pgcron_databases(pgcron_server: pgcron.PgCronServer) -> Server:
    """Throwaway databases on the pg_cron cluster."""
    return Server(pgcron_server.admin_url)


@pytest.fixture(scope="module")
def pgcron_template(pgcron_databases: Server) -> Iterator[Database]:
    template = pgcron_databases.create()
    migrate.upgrade(template.url)
    yield template
    pgcron_databases.drop(template)


@pytest.fixture
def cron_db(pgcron_server: pgcron.PgCronServer, pgcron_databases: Server,
            pgcron_template: Database) -> Iterator[Database]:
    """A database with credits-db installed on the pg_cron cluster, and no pg_cron job:
    the jobs are the cluster's (in cron.database_name), so each test starts without any."""
    with pgcron_server.connect() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        conn.execute("SELECT cron.unschedule(jobid) FROM cron.job")
    database = pgcron_databases.create(template=pgcron_template.name)
    yield database
    pgcron_databases.drop(database)
