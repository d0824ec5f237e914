"""``credits-db schedule``: the pg_cron jobs that renew allowances and sweep expired lots.

Against a real pg_cron (1.4 here: Debian's postgresql-15-cron, in a throwaway
cluster that preloads it, tests/support/pgcron.py). pg_cron 1.4 schedules by the
minute at best, so no test waits for it: the job's command is read from cron.job
and run as pg_cron runs it (in the job's database, as the job's login, one simple
query), and its effect checked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import sql

import credits_db
from credits_db import migrate, scheduling
from credits_db.cli import PG_CRON_UNAVAILABLE
from tests.support.cli import as_json, cli
from tests.support.databases import Database, Server
from tests.support.helpers import Conn, add_users
from tests.support.pgcron import CRON_DATABASE, SUPERUSER, PgCronServer

RENEW = ("credits-db-renew", "0 * * * *", "SELECT public.renew_allowances()")
EXPIRE = ("credits-db-expire", "*/15 * * * *", "SELECT public.expire_credits()")


def jobs(server: PgCronServer) -> list[tuple[Any, ...]]:
    """Every pg_cron job of the cluster (as its superuser: row level security shows all)."""
    with server.connect() as conn:
        return conn.execute("SELECT jobname, schedule, command, database, username, active"
                            " FROM cron.job ORDER BY jobname").fetchall()


def job_ids(server: PgCronServer) -> list[int]:
    with server.connect() as conn:
        return [row[0] for row in conn.execute("SELECT jobid FROM cron.job ORDER BY jobname")]


def expected(database: str, username: str = SUPERUSER) -> list[tuple[Any, ...]]:
    return [(*EXPIRE, database, username, True), (*RENEW, database, username, True)]


def run_as_pg_cron(server: PgCronServer, jobname: str) -> Any:
    """Run the job's command as pg_cron does: connect to the job's database as the job's
    login and send the command as one simple query (libpq's PQexec); its one value."""
    with server.connect() as conn:
        row = conn.execute("SELECT command, database, username FROM cron.job"
                           " WHERE jobname = %s", (jobname,)).fetchone()
    assert row is not None
    command, database, username = row
    url = f"postgresql://{username}@127.0.0.1:{server.port}/{database}"
    with psycopg.connect(url, autocommit=True) as job:
        result = job.pgconn.exec_(command.encode())
        assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, result.error_message
        value = result.get_value(0, 0)
    assert value is not None
    return json.loads(value.decode())


def age(conn: Conn, days: int) -> None:
    """Time passes for every account: opening, period and lots move ``days`` into the past."""
    conn.execute("UPDATE user_credits SET created_at = created_at - %(d)s * interval '1 day',"
                 " period_ends_at = period_ends_at - %(d)s * interval '1 day'", {"d": days})
    conn.execute("UPDATE credit_lots SET expires_at = expires_at - %(d)s * interval '1 day'"
                 " WHERE expires_at IS NOT NULL", {"d": days})


@contextmanager
def login(server: PgCronServer, *grants: LiteralString) -> Iterator[str]:
    """A new LOGIN role (cluster-wide: a unique name) given ``grants``, dropped after."""
    name = f"credits_scheduler_{os.getpid()}"
    role = sql.Identifier(name)
    with server.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        for grant in grants:
            conn.execute(sql.SQL(grant).format(role))
    try:
        yield name
    finally:
        with server.connect() as conn:
            if conn.execute("SELECT to_regclass('cron.job')").fetchone() != (None,):
                conn.execute(sql.SQL("SELECT cron.unschedule(jobid) FROM cron.job"
                                     " WHERE username = {}").format(sql.Literal(name)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
            conn.execute(sql.SQL("DROP ROLE {}").format(role))


# --- no pg_cron ---------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--unschedule"], ["--json"]])
def test_without_pg_cron_one_line_exit_4_and_the_hint(db: Database, extra: list[str]) -> None:
    """The session's test server does not load pg_cron."""
    result = cli("schedule", *extra, "--url", db.url)
    assert (result.returncode, result.stdout) == (PG_CRON_UNAVAILABLE, "")
    assert PG_CRON_UNAVAILABLE == 4
    assert result.stderr == (
        "credits-db: error: pg_cron is not loaded on this server (no cron.database_name: "
        "shared_preload_libraries does not include pg_cron); run credits-db renew and "
        "credits-db expire from any scheduler instead (cron, a Kubernetes CronJob, systemd "
        "timers), or load pg_cron: shared_preload_libraries = 'pg_cron', then CREATE "
        "EXTENSION pg_cron in the database cron.database_name names\n")


def test_pg_cron_loaded_but_its_extension_not_created(pgcron_server: PgCronServer,
                                                      cron_db: Database) -> None:
    with pgcron_server.connect() as conn:
        conn.execute("DROP EXTENSION pg_cron")
    try:
        result = cli("schedule", "--url", cron_db.url)
        with login(pgcron_server, "GRANT credits_admin TO {}") as name:
            # A login that may not read cron.database_name looks for the extension.
            url = f"postgresql://{name}@127.0.0.1:{pgcron_server.port}/{cron_db.name}"
            unprivileged = cli("schedule", "--url", url)
    finally:
        with pgcron_server.connect() as conn:
            conn.execute("CREATE EXTENSION pg_cron")
    assert result.returncode == PG_CRON_UNAVAILABLE
    assert result.stderr.startswith(
        "credits-db: error: pg_cron is loaded but its extension is not created in database "
        "'postgres' (cron.database_name): run CREATE EXTENSION pg_cron there; run "
        "credits-db renew and credits-db expire from any scheduler instead")
    assert result.stderr.count("\n") == 1
    assert unprivileged.returncode == PG_CRON_UNAVAILABLE
    assert unprivileged.stderr.startswith(
        f"credits-db: error: pg_cron is loaded, but login '{name}' may not read "
        "cron.database_name (a superuser, or GRANT pg_read_all_settings) and pg_cron's "
        f"extension is neither in database '{cron_db.name}' nor in 'postgres': give --url of "
        "the database cron.database_name names, and --database of credits-db's; run "
        "credits-db renew and credits-db expire from any scheduler instead")


# --- scheduling ---------------------------------------------------------------------------------


def test_schedule_creates_both_jobs_in_the_credits_db_database(pgcron_server: PgCronServer,
                                                               cron_db: Database) -> None:
    result = cli("schedule", "--url", cron_db.url)
    assert result.returncode == 0, result.stderr
    assert jobs(pgcron_server) == expected(cron_db.name)
    expire_id, renew_id = job_ids(pgcron_server)
    assert result.stdout.splitlines() == [
        f"scheduled credits-db-expire (job {expire_id}): '*/15 * * * *' in database "
        f"{cron_db.name}: SELECT public.expire_credits()",
        f"scheduled credits-db-renew (job {renew_id}): '0 * * * *' in database "
        f"{cron_db.name}: SELECT public.renew_allowances()",
        "pg_cron 1.4-1 runs them (its jobs are in database postgres: SELECT * FROM "
        "cron.job_run_details); remove them with credits-db schedule --unschedule"]


def test_scheduling_again_keeps_two_jobs_and_updates_them(pgcron_server: PgCronServer,
                                                          cron_db: Database) -> None:
    assert cli("schedule", "--url", cron_db.url).returncode == 0
    first = job_ids(pgcron_server)
    again = as_json(cli("schedule", "--renew-cron", "30 2 * * *", "--expire-cron",
                        "*/5 * * * *", "--json", "--url", cron_db.url))
    assert job_ids(pgcron_server) == first  # the same two jobs, replaced
    assert jobs(pgcron_server) == [
        ("credits-db-expire", "*/5 * * * *", EXPIRE[2], cron_db.name, SUPERUSER, True),
        ("credits-db-renew", "30 2 * * *", RENEW[2], cron_db.name, SUPERUSER, True)]
    assert again == {
        "action": "scheduled", "cron_database": CRON_DATABASE, "database": cron_db.name,
        "pg_cron_version": "1.4-1",
        "jobs": [{"jobid": first[0], "jobname": "credits-db-expire", "schedule": "*/5 * * * *",
                  "command": EXPIRE[2], "database": cron_db.name, "username": SUPERUSER,
                  "active": True},
                 {"jobid": first[1], "jobname": "credits-db-renew", "schedule": "30 2 * * *",
                  "command": RENEW[2], "database": cron_db.name, "username": SUPERUSER,
                  "active": True}]}
    assert cli("schedule", "--url", cron_db.url).returncode == 0  # back to the defaults
    assert jobs(pgcron_server) == expected(cron_db.name)


def test_unschedule_removes_both_jobs_and_is_idempotent(pgcron_server: PgCronServer,
                                                       cron_db: Database) -> None:
    assert cli("schedule", "--url", cron_db.url).returncode == 0
    expire_id, renew_id = job_ids(pgcron_server)
    result = cli("schedule", "--unschedule", "--url", cron_db.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"unscheduled credits-db-expire (job {expire_id}): '*/15 * * * *' in database "
        f"{cron_db.name}: SELECT public.expire_credits()",
        f"unscheduled credits-db-renew (job {renew_id}): '0 * * * *' in database "
        f"{cron_db.name}: SELECT public.renew_allowances()"]
    assert jobs(pgcron_server) == []
    again = cli("schedule", "--unschedule", "--url", cron_db.url)
    assert (again.returncode, again.stdout) == (
        0, f"no credits-db jobs to unschedule in database {cron_db.name}\n")
    assert as_json(cli("schedule", "--unschedule", "--json", "--url", cron_db.url))["jobs"] == []
    used = cli("schedule", "--unschedule", "--renew-cron", "0 0 * * *", "--url", cron_db.url)
    assert (used.returncode, used.stderr) == (
        2, "credits-db: error: --unschedule takes no --renew-cron or --expire-cron\n")


def test_the_jobs_renew_and_expire_when_run_as_pg_cron_runs_them(pgcron_server: PgCronServer,
                                                                 cron_db: Database) -> None:
    with cron_db.connect() as conn:
        conn.execute("UPDATE role_credits SET renewal_interval = '1 month' WHERE role = 'member'")
        users = add_users(conn, "member", "member", "member")
        age(conn, 40)  # the first period ended about 9 days ago
        # A grant whose lot lapsed a second ago (backdated as its owner may), for the sweep.
        conn.execute("SELECT grant_credits(p_user_id => %s, p_amount => 40, p_source => 'bonus',"
                     " p_description => NULL, p_idempotency_key => NULL,"
                     " p_expires_at => now() + interval '1 hour')", (users[0],))
        conn.execute("UPDATE credit_lots SET expires_at = now() - interval '1 second'"
                     " WHERE source = 'bonus'")
    assert cli("schedule", "--url", cron_db.url).returncode == 0
    renewal = run_as_pg_cron(pgcron_server, "credits-db-renew")
    assert {k: renewal[k] for k in ("accounts_renewed", "credits_renewed", "credits_expired",
                                    "accounts_skipped")} == {
        "accounts_renewed": 3, "credits_renewed": 1050, "credits_expired": 1050,
        "accounts_skipped": 0}
    assert run_as_pg_cron(pgcron_server, "credits-db-renew")["accounts_renewed"] == 0
    sweep = run_as_pg_cron(pgcron_server, "credits-db-expire")
    assert (sweep["lots_expired"], sweep["credits_expired"]) == (1, 40)
    with cron_db.connect() as conn:
        assert credits_db.verify(conn) == []
        assert [credits_db.balance(conn, u).own.remaining_credits  # type: ignore[union-attr]
                for u in users] == [350, 350, 350]


def test_credits_db_in_pg_cron_s_own_database(pgcron_server: PgCronServer,
                                              pgcron_databases: Server,
                                              cron_db: Database) -> None:
    """cron.schedule (no other database); then the same login cannot also schedule the
    jobs of another database, and --unschedule --database frees the names."""
    migrate.upgrade(pgcron_server.admin_url)
    result = cli("schedule", "--url", pgcron_server.admin_url)
    assert result.returncode == 0, result.stderr
    assert jobs(pgcron_server) == expected(CRON_DATABASE)
    with pgcron_server.connect() as conn:
        add_users(conn, "member")
        conn.execute("UPDATE role_credits SET renewal_interval = '1 day' WHERE role = 'member'")
        age(conn, 2)
    assert run_as_pg_cron(pgcron_server, "credits-db-renew")["accounts_renewed"] == 1

    other = cli("schedule", "--url", cron_db.url)
    assert (other.returncode, other.stdout) == (1, "")
    assert other.stderr == (
        "credits-db: error: job credits-db-expire of login 'postgres' already runs in database "
        "'postgres': unschedule it there first (credits-db schedule --unschedule --database "
        "postgres)\n")
    assert jobs(pgcron_server) == expected(CRON_DATABASE)  # untouched
    # --unschedule removes only the jobs of the database it names.
    assert as_json(cli("schedule", "--unschedule", "--json", "--url", cron_db.url))["jobs"] == []
    assert len(jobs(pgcron_server)) == 2
    freed = cli("schedule", "--unschedule", "--database", CRON_DATABASE, "--url", cron_db.url)
    assert freed.returncode == 0 and jobs(pgcron_server) == []
    # --database: the URL may name any database of the server.
    moved = cli("schedule", "--database", cron_db.name, "--url", pgcron_server.admin_url)
    assert moved.returncode == 0, moved.stderr
    assert jobs(pgcron_server) == expected(cron_db.name)


def test_a_bad_schedule_is_a_usage_error_and_changes_nothing(pgcron_server: PgCronServer,
                                                             cron_db: Database) -> None:
    # The renewal's job is created first: the expiry's refusal must roll it back.
    result = cli("schedule", "--expire-cron", "every 15 minutes", "--url", cron_db.url)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "credits-db: error: pg_cron refused a schedule (invalid schedule: every 15 minutes): "
        "give --renew-cron and --expire-cron in cron syntax, e.g. '0 * * * *'\n")
    assert jobs(pgcron_server) == []


def test_where_credits_db_is_not_installed(pgcron_server: PgCronServer,
                                           pgcron_databases: Server) -> None:
    empty = pgcron_databases.create()
    try:
        result = cli("schedule", "--url", empty.url)
        missing = cli("schedule", "--database", "no_such_database", "--url",
                      pgcron_server.admin_url)
    finally:
        pgcron_databases.drop(empty)
    assert result.returncode == 1
    assert result.stderr == (
        f"credits-db: error: credits-db is not installed in database '{empty.name}' at revision "
        "0011 or later (no public.renew_allowances or public.expire_credits): run credits-db "
        "upgrade there first\n")
    assert jobs(pgcron_server) == []
    assert missing.returncode == 1
    assert 'database "no_such_database" does not exist' in missing.stderr


def test_a_login_the_jobs_cannot_run_as_is_refused(pgcron_server: PgCronServer,
                                                   cron_db: Database) -> None:
    with login(pgcron_server) as name:
        url = f"postgresql://{name}@127.0.0.1:{pgcron_server.port}/{cron_db.name}"
        result = cli("schedule", "--url", url)
    assert result.returncode == 1
    assert result.stderr == (
        f"credits-db: error: login '{name}' may not execute renew_allowances and "
        f"expire_credits in database '{cron_db.name}', and the jobs would run as it: grant it "
        "credits_admin, or schedule as a login that has it\n")
    assert jobs(pgcron_server) == []


def test_a_credits_admin_login_without_pg_cron_s_grants_is_told_which(
        pgcron_server: PgCronServer, cron_db: Database) -> None:
    with login(pgcron_server, "GRANT credits_admin TO {}") as name:
        url = f"postgresql://{name}@127.0.0.1:{pgcron_server.port}/{cron_db.name}"
        result = cli("schedule", "--url", url)
    assert result.returncode == 1
    assert result.stderr == (
        f"credits-db: error: login '{name}' may not use pg_cron (permission denied for schema "
        f"cron): a superuser grants it in database 'postgres': GRANT USAGE ON SCHEMA cron TO "
        f"{name} and GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text, text, text, "
        f"text, text, boolean) TO {name} (the jobs run in another database)\n")


def test_a_credits_admin_login_with_pg_cron_s_grants_schedules_jobs_run_as_itself(
        pgcron_server: PgCronServer, cron_db: Database) -> None:
    grants = ("GRANT credits_admin TO {}", "GRANT USAGE ON SCHEMA cron TO {}",
              "GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text, text, text, text, text,"
              " boolean) TO {}")
    with cron_db.connect() as conn:
        conn.execute("UPDATE role_credits SET renewal_interval = '1 day' WHERE role = 'member'")
        add_users(conn, "member", "member")
        age(conn, 2)
    with login(pgcron_server, *grants) as name:
        url = f"postgresql://{name}@127.0.0.1:{pgcron_server.port}/{cron_db.name}"
        result = cli("schedule", "--url", url)
        assert result.returncode == 0, result.stderr
        assert jobs(pgcron_server) == expected(cron_db.name, name)
        assert run_as_pg_cron(pgcron_server, "credits-db-renew")["accounts_renewed"] == 2
        assert cli("schedule", "--unschedule", "--url", url).returncode == 0
        assert jobs(pgcron_server) == []


def test_the_python_api_returns_the_jobs(pgcron_server: PgCronServer, cron_db: Database) -> None:
    done = scheduling.schedule(cron_db.url, renew_cron="15 * * * *")
    assert (done.cron_database, done.database) == (CRON_DATABASE, cron_db.name)
    assert [(j.jobname, j.schedule, j.command) for j in done.jobs] == [
        EXPIRE, ("credits-db-renew", "15 * * * *", RENEW[2])]
    removed = scheduling.unschedule(cron_db.url)
    assert removed.jobs == done.jobs
    assert scheduling.unschedule(cron_db.url).jobs == ()
