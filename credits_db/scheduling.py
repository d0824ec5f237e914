"""Renewals and expiry on a schedule, by pg_cron (``credits-db schedule``).

Two jobs, run by pg_cron inside PostgreSQL as the login that scheduled them:

* ``credits-db-renew``: ``SELECT public.renew_allowances()``, hourly by default;
* ``credits-db-expire``: ``SELECT public.expire_credits()``, every 15 minutes.

pg_cron keeps its jobs in one database of the server (its setting
``cron.database_name``); a job runs in that database or, scheduled with
``cron.schedule_in_database``, in another one: the database credits-db is
installed in. A job is unique per name and login, so scheduling again replaces
the schedule and command and never adds a job. Where pg_cron is not loaded, or
its extension was never created, :class:`PgCronUnavailable` says so: any other
scheduler can run ``credits-db renew`` and ``credits-db expire`` instead.

The statements are in ``credits_db/scheduling.sql``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final, LiteralString

import psycopg

from credits_db._queries import parse

QUERIES = parse(files("credits_db").joinpath("scheduling.sql").read_text(encoding="utf-8"))

RENEW_JOB: Final = "credits-db-renew"
EXPIRE_JOB: Final = "credits-db-expire"
RENEW_COMMAND: Final = "SELECT public.renew_allowances()"
EXPIRE_COMMAND: Final = "SELECT public.expire_credits()"
DEFAULT_RENEW_CRON: Final = "0 * * * *"
DEFAULT_EXPIRE_CRON: Final = "*/15 * * * *"
JOB_NAMES: Final = (EXPIRE_JOB, RENEW_JOB)
"""In the order the jobs are listed (by name)."""

EXTERNAL_SCHEDULER_HINT: Final = (
    "run credits-db renew and credits-db expire from any scheduler instead (cron, a "
    "Kubernetes CronJob, systemd timers), or load pg_cron: shared_preload_libraries = "
    "'pg_cron', then CREATE EXTENSION pg_cron in the database cron.database_name names")


class SchedulingError(Exception):
    """The jobs cannot be scheduled here (the message says why and what to do)."""


class PgCronUnavailable(SchedulingError):
    """pg_cron is not available on this server: not loaded, or its extension not created."""


@dataclass(frozen=True)
class CronJob:
    """One row of ``cron.job``."""

    jobid: int
    jobname: str
    schedule: str
    command: str
    database: str
    username: str
    active: bool

    @classmethod
    def list_from_json(cls, rows: list[Mapping[str, Any]]) -> list[CronJob]:
        """Build the list from the ``jobs`` query's jsonb array."""
        return [cls(int(r["jobid"]), str(r["jobname"]), str(r["schedule"]), str(r["command"]),
                    str(r["database"]), str(r["username"]), bool(r["active"])) for r in rows]


@dataclass(frozen=True)
class Schedule:
    """The credits-db jobs of one database after :func:`schedule` or :func:`unschedule`.

    Attributes:
        cron_database: where pg_cron keeps its jobs (``cron.database_name``).
        database: the database the jobs run in (credits-db's).
        pg_cron_version: the extension's version.
        jobs: after :func:`schedule`, the two jobs as pg_cron now has them; after
            :func:`unschedule`, the jobs it removed (none when there were none).
    """

    cron_database: str
    database: str
    pg_cron_version: str
    jobs: tuple[CronJob, ...]


def _one(conn: psycopg.Connection[Any], query: LiteralString,
         params: Mapping[str, Any] | None = None) -> Any:
    # Unprepared, as every statement of the package (a pooler may sit in between).
    row = conn.execute(query, params or {}, prepare=False).fetchone()
    assert row is not None
    return row[0]


@contextmanager
def _connect(url: str, database: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to ``url``, or to another ``database`` of its server."""
    options: dict[str, Any] = {} if database is None else {"dbname": database}
    with psycopg.connect(url, autocommit=True, connect_timeout=10, **options) as conn:
        yield conn


@dataclass(frozen=True)
class _Where:
    login: str
    database: str
    cron_database: str
    url_database: str


def _where(url: str, database: str | None) -> _Where:
    """Who we are, which database the jobs run in, where pg_cron is; refuse when it is not
    loaded."""
    with _connect(url) as conn:
        here = _one(conn, QUERIES["here"])
        try:
            cron_database = _one(conn, QUERIES["cron_database_name"])
        except psycopg.errors.InsufficientPrivilege:
            # Loaded (the setting exists), but this login may not read it.
            cron_database = _find_cron_database(url, here["database"], here["login"])
    if cron_database is None:
        raise PgCronUnavailable(
            "pg_cron is not loaded on this server (no cron.database_name: "
            "shared_preload_libraries does not include pg_cron)")
    return _Where(here["login"], database or here["database"], cron_database,
                  here["database"])


PG_CRON_DEFAULT_DATABASE: Final = "postgres"
"""cron.database_name when the server's configuration does not set it."""


def _find_cron_database(url: str, url_database: str, login: str) -> str:
    """pg_cron's database, for a login that may not read cron.database_name: pg_cron
    creates its extension only there, so the URL's database if it has the extension,
    else pg_cron's default database if that has it."""
    for candidate in dict.fromkeys((url_database, PG_CRON_DEFAULT_DATABASE)):
        try:
            with _connect(url, None if candidate == url_database else candidate) as conn:
                if _one(conn, QUERIES["pg_cron_version"]) is not None:
                    return candidate
        except psycopg.OperationalError:
            continue  # not there, or not ours to connect to
    raise PgCronUnavailable(
        f"pg_cron is loaded, but login {login!r} may not read cron.database_name (a superuser, "
        "or GRANT pg_read_all_settings) and pg_cron's extension is neither in database "
        f"{url_database!r} nor in {PG_CRON_DEFAULT_DATABASE!r}: give --url of the database "
        "cron.database_name names, and --database of credits-db's")


@contextmanager
def _cron(url: str, where: _Where) -> Iterator[tuple[psycopg.Connection[Any], str]]:
    """A connection to pg_cron's database, and the extension's version there."""
    same = where.cron_database == where.url_database
    with _connect(url, None if same else where.cron_database) as conn:
        version = _one(conn, QUERIES["pg_cron_version"])
        if version is None:
            raise PgCronUnavailable(
                f"pg_cron is loaded but its extension is not created in database "
                f"{where.cron_database!r} (cron.database_name): run CREATE EXTENSION pg_cron "
                "there")
        yield conn, str(version)


def _check_credits_db(url: str, where: _Where) -> None:
    """The jobs' commands can run in ``where.database`` as this login."""
    same = where.database == where.url_database
    with _connect(url, None if same else where.database) as conn:
        state = _one(conn, QUERIES["credits_db_state"])
    if not state["installed"]:
        raise SchedulingError(
            f"credits-db is not installed in database {where.database!r} at revision 0011 or "
            "later (no public.renew_allowances or public.expire_credits): run credits-db "
            "upgrade there first")
    if not state["may_run"]:
        raise SchedulingError(
            f"login {where.login!r} may not execute renew_allowances and expire_credits in "
            f"database {where.database!r}, and the jobs would run as it: grant it "
            "credits_admin, or schedule as a login that has it")


@contextmanager
def _cron_privileges(where: _Where) -> Iterator[None]:
    """pg_cron refused this login: say which grants a superuser gives."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        in_database = ("" if where.database == where.cron_database else
                       " and GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text, text, "
                       f"text, text, text, boolean) TO {where.login} (the jobs run in another "
                       "database)")
        raise SchedulingError(
            f"login {where.login!r} may not use pg_cron ({exc.diag.message_primary}): a "
            f"superuser grants it in database {where.cron_database!r}: GRANT USAGE ON SCHEMA "
            f"cron TO {where.login}{in_database}") from exc


def _jobs(conn: psycopg.Connection[Any]) -> list[CronJob]:
    return CronJob.list_from_json(_one(conn, QUERIES["jobs"], {"names": list(JOB_NAMES)}))


def schedule(url: str, *, renew_cron: str = DEFAULT_RENEW_CRON,
             expire_cron: str = DEFAULT_EXPIRE_CRON, database: str | None = None) -> Schedule:
    """Create or update the two pg_cron jobs (``credits-db schedule``); idempotent.

    Both jobs are created or replaced in one transaction of pg_cron's database
    (``cron.schedule``, or ``cron.schedule_in_database`` when credits-db is in
    another database). They run as the login of ``url``, which must be able to
    execute the functions (``credits_admin``). A job is unique per name and
    login: the same login cannot schedule the jobs of two databases of one
    server, and a job of that name already running in another database is
    refused rather than taken over (unschedule it there first).

    Parameters:
        url: a libpq URL of the server (any database of it; the login schedules).
        renew_cron: when ``renew_allowances()`` runs (cron syntax, pg_cron's rules).
        expire_cron: when ``expire_credits()`` runs.
        database: the database the jobs run in; default: ``url``'s.

    Raises:
        PgCronUnavailable: pg_cron is not loaded, or its extension not created.
        SchedulingError: credits-db is not installed there, the login may not
            run it, or the jobs already run in another database.
        psycopg.errors.InvalidParameterValue: pg_cron refused a schedule (nothing
            was changed).
    """
    where = _where(url, database)
    _check_credits_db(url, where)
    with _cron(url, where) as (conn, version), _cron_privileges(where), conn.transaction():
        for job in _jobs(conn):
            if job.database != where.database:
                raise SchedulingError(
                    f"job {job.jobname} of login {job.username!r} already runs in database "
                    f"{job.database!r}: unschedule it there first (credits-db schedule "
                    f"--unschedule --database {job.database})")
        in_database = where.database != where.cron_database
        for name, cron, command in ((RENEW_JOB, renew_cron, RENEW_COMMAND),
                                    (EXPIRE_JOB, expire_cron, EXPIRE_COMMAND)):
            params = {"name": name, "schedule": cron, "command": command,
                      "database": where.database}
            _one(conn, QUERIES["schedule_in_database" if in_database else "schedule"], params)
        jobs = _jobs(conn)
    return Schedule(where.cron_database, where.database, version, tuple(jobs))


def unschedule(url: str, *, database: str | None = None) -> Schedule:
    """Remove the two jobs of ``database`` (``credits-db schedule --unschedule``).

    Only this login's jobs of those names that run in ``database`` (default:
    ``url``'s) are removed; none there is not an error. credits-db need not be
    installed any more.

    Raises:
        PgCronUnavailable: pg_cron is not loaded, or its extension not created.
    """
    where = _where(url, database)
    with _cron(url, where) as (conn, version), _cron_privileges(where), conn.transaction():
        removed = [job for job in _jobs(conn) if job.database == where.database]
        for job in removed:
            _one(conn, QUERIES["unschedule"], {"jobid": job.jobid})
    return Schedule(where.cron_database, where.database, version, tuple(removed))
