"""A throwaway PostgreSQL 15 cluster with pg_cron preloaded (no tests here).

``credits-db schedule`` needs a server that loads pg_cron at start
(``shared_preload_libraries``), which the session's test server does not.
:func:`running` makes one from Debian's PostgreSQL 15 binaries and its
``postgresql-15-cron`` package (``.ci/run`` installs both): ``initdb`` into a
temporary directory, ``cron.database_name = 'postgres'``, listening on
127.0.0.1 on a free port with its Unix socket in that directory, started and
stopped with ``pg_ctl``. PostgreSQL refuses to run as root: as root it runs as
an unprivileged account (``postgres``, else ``nobody``), as PgBouncer does in
:mod:`tests.support.pgbouncer`.

Where the binaries are missing the tests skip with the reason, as the pooler
tests do, unless ``CREDITS_DB_REQUIRE_PGCRON`` is set (``.ci/run`` sets it):
then they fail, so CI cannot pass without having run them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

BINARIES = Path("/usr/lib/postgresql/15/bin")
PG_CRON_LIBRARY = Path("/usr/lib/postgresql/15/lib/pg_cron.so")
INSTALL_HINT = "Debian: apt-get install postgresql-15 postgresql-15-cron; .ci/run installs them"
REQUIRE_VARIABLE = "CREDITS_DB_REQUIRE_PGCRON"
CRON_DATABASE = "postgres"
SUPERUSER = "postgres"
UNPRIVILEGED_USERS = ("postgres", "nobody")
START_TIMEOUT = 60
PORT_ATTEMPTS = 5


@dataclass(frozen=True)
class PgCronServer:
    """A running cluster with pg_cron: where to connect (as its superuser, trust auth)."""

    port: int
    socket_dir: Path
    data_dir: Path

    @property
    def admin_url(self) -> str:
        """The superuser's URL of the cron database (``cron.database_name``)."""
        return self.url(CRON_DATABASE)

    def url(self, database: str) -> str:
        """A ``postgresql://`` URL of ``database`` on this cluster, as the superuser."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = CRON_DATABASE) -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit connection to ``database`` as the superuser."""
        return psycopg.connect(self.url(database), autocommit=True)


def missing() -> str | None:
    """Why the cluster cannot be made here, or None when everything is installed."""
    needed = [BINARIES / name for name in ("initdb", "pg_ctl", "postgres")] + [PG_CRON_LIBRARY]
    absent = [str(path) for path in needed if not path.exists()]
    if absent:
        return (f"PostgreSQL 15 with pg_cron is not installed ({', '.join(absent)} missing; "
                f"{INSTALL_HINT}): the pg_cron tests of credits-db schedule need it")
    return None


def require() -> None:
    """Skip the test when pg_cron's cluster cannot be made; fail instead under CI."""
    reason = missing()
    if reason is None:
        return
    if os.environ.get(REQUIRE_VARIABLE, "").strip():
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE} is set: these tests must run)",
                    pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class _Account:
    """The OS account the cluster runs as (None: ourselves)."""

    uid: int
    gid: int


def _run_as() -> _Account | None:
    """Ourselves unless we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _Account(entry.pw_uid, entry.pw_gid)
    raise AssertionError(f"running as root and none of {UNPRIVILEGED_USERS} exists to run "
                         "PostgreSQL as")


def _run(command: list[str], owner: _Account | None, cwd: Path
         ) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    if owner is None:
        return subprocess.run(command, capture_output=True, text=True, cwd=cwd,
                              env=environment, timeout=START_TIMEOUT + 30, check=False)
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=environment,
                          timeout=START_TIMEOUT + 30, check=False,
                          user=owner.uid, group=owner.gid, extra_groups=[])


def _checked(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise AssertionError(f"{what} failed ({result.returncode}):\n{result.stdout}"
                             f"{result.stderr}")


def _free_port() -> int:
    """A loopback TCP port nobody listens on right now (the server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _settings(socket_dir: Path) -> str:
    return "\n".join([
        "",
        "# credits-db tests: pg_cron, loopback only, no durability needed",
        "shared_preload_libraries = 'pg_cron'",
        f"cron.database_name = '{CRON_DATABASE}'",
        # The scheduler's own connections go through the socket (trust auth).
        f"cron.host = '{socket_dir}'",
        "listen_addresses = '127.0.0.1'",
        f"unix_socket_directories = '{socket_dir}'",
        "fsync = off",
        "synchronous_commit = off",
        "full_page_writes = off",
        "max_connections = 40",
        "",
    ])


@contextmanager
def running() -> Iterator[PgCronServer]:
    """A new cluster with pg_cron preloaded and ``CREATE EXTENSION pg_cron`` done in
    ``postgres``; stopped and deleted afterwards."""
    require()
    owner = _run_as()
    workdir = Path(tempfile.mkdtemp(prefix="credits-db-pgcron-"))
    data_dir = workdir / "data"
    try:
        if owner is not None:
            os.chown(workdir, owner.uid, owner.gid)
        _checked(_run([str(BINARIES / "initdb"), "-D", str(data_dir), "-U", SUPERUSER,
                       "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                      owner, workdir), "initdb")
        with (data_dir / "postgresql.conf").open("a") as conf:
            conf.write(_settings(workdir))
        log = workdir / "server.log"
        for _attempt in range(PORT_ATTEMPTS):
            port = _free_port()
            started = _run([str(BINARIES / "pg_ctl"), "-D", str(data_dir), "-l", str(log),
                            "-w", "-t", str(START_TIMEOUT), "-o", f"-p {port}", "start"],
                           owner, workdir)
            if started.returncode == 0:
                break
            # Another process may have taken the port between the probe and the start.
        else:
            raise AssertionError(f"PostgreSQL with pg_cron did not start:\n{log.read_text()}")
        try:
            server = PgCronServer(port, workdir, data_dir)
            with server.connect() as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
            yield server
        finally:
            _checked(_run([str(BINARIES / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w",
                           "stop"], owner, workdir), "pg_ctl stop")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
