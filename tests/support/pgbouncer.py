"""A real PgBouncer in transaction mode in front of the test server (no tests here).

Transaction pooling (PgBouncer, Supabase's pooler on port 6543) hands a client a
server connection for one transaction only, so clients take turns on few server
connections. :func:`running` starts Debian's ``pgbouncer`` on a free loopback
port with ``default_pool_size`` server connections per database and login, so
clients of one login share them; tests skip with a reason where the binary is
missing. PgBouncer refuses to run as root: as root it runs as an unprivileged
account (``nobody``, or the embedded server's own account, to reach its socket).

:func:`login_role` makes the login an application would use for a user's
requests: a member of ``credits_user`` (not ``credits_admin``).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

DEBIAN_BINARY = "/usr/sbin/pgbouncer"
"""Where Debian's package installs it (``/usr/sbin`` is not on every user's PATH)."""

UNPRIVILEGED_USER = "nobody"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PORT_ATTEMPTS = 5


@dataclass(frozen=True)
class Login:
    """A database login: user name and password (the password matters only when the
    server asks for one; PgBouncer forwards it from its auth file)."""

    user: str
    password: str


@dataclass(frozen=True)
class PgBouncer:
    """A running PgBouncer: where clients connect and who may."""

    host: str
    port: int
    admin: Login
    pool_size: int
    pid: int

    def url(self, database: str, login: Login | None = None) -> str:
        """A ``postgresql://`` URL of ``database`` through the pooler, as ``login``
        (default: the server's admin)."""
        login = login or self.admin
        return (f"postgresql://{quote(login.user, safe='')}:{quote(login.password, safe='')}"
                f"@{self.host}:{self.port}/{quote(database, safe='')}")


def find_binary() -> str | None:
    """The ``pgbouncer`` executable, or None when it is not installed."""
    found = shutil.which("pgbouncer")
    if found is not None:
        return found
    return DEBIAN_BINARY if os.access(DEBIAN_BINARY, os.X_OK) else None


def require_binary() -> str:
    """The ``pgbouncer`` executable; skip the test when it is not installed."""
    binary = find_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer; "
                    ".ci/run installs it): the tests through a transaction pooler need it")
    return binary


def _quote(value: str) -> str:
    """A value for PgBouncer's auth file: in double quotes, inner quotes doubled."""
    return '"' + value.replace('"', '""') + '"'


def _connstring_value(value: str) -> str:
    """A value for a ``[databases]`` connection string (single-quoted when needed)."""
    if value and all(c.isalnum() or c in "/._-" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _free_port() -> int:
    """A loopback TCP port nobody listens on right now (PgBouncer binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class _Target:
    """The test server as PgBouncer reaches it (host may be a Unix socket directory)."""

    host: str
    port: int
    admin: Login


def _target(admin_url: str) -> _Target:
    """Where the server at ``admin_url`` really is, as libpq resolved it."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        info = conn.info
        return _Target(info.host, info.port, Login(info.user, info.password or ""))


def _config(target: _Target, port: int, workdir: Path, pool_size: int) -> str:
    return "\n".join([
        "[databases]",
        # Every database name the client asks for, on the test server.
        f"* = host={_connstring_value(target.host)} port={target.port}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {workdir / 'userlist.txt'}",
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        "min_pool_size = 0",
        "reserve_pool_size = 0",
        "max_client_conn = 200",
        f"admin_users = {target.admin.user}",
        "",
    ])


@dataclass(frozen=True)
class _Account:
    """The unprivileged OS account PgBouncer runs as (when the tests run as root)."""

    uid: int
    gid: int


def _run_as(target: _Target) -> _Account | None:
    """Who runs PgBouncer: ourselves, unless we are root (PgBouncer refuses to run as
    root). Then the owner of the server's Unix socket directory when that is not
    root (an embedded server keeps its socket in its data directory, which only
    its own account may enter), else ``nobody``."""
    if os.geteuid() != 0:
        return None
    if target.host.startswith("/"):
        owner = os.stat(target.host)
        if owner.st_uid != 0:
            return _Account(owner.st_uid, owner.st_gid)
    nobody = pwd.getpwnam(UNPRIVILEGED_USER)
    return _Account(nobody.pw_uid, nobody.pw_gid)


def _prepare_workdir(target: _Target, logins: Sequence[Login], owner: _Account | None) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="credits-db-pgbouncer-"))
    users = [target.admin, *logins]
    (workdir / "userlist.txt").write_text(
        "".join(f"{_quote(u.user)} {_quote(u.password)}\n" for u in users))
    if owner is not None:
        for path in (workdir, workdir / "userlist.txt"):
            os.chown(path, owner.uid, owner.gid)
    return workdir


def _start(binary: str, config: Path, log: Path, owner: _Account | None
           ) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        if owner is None:
            return subprocess.Popen([binary, str(config)], stdout=out, stderr=out)
        return subprocess.Popen([binary, str(config)], stdout=out, stderr=out,
                                user=owner.uid, group=owner.gid, extra_groups=[])


def _accepting(port: int, admin: Login) -> bool:
    """Whether PgBouncer answers a login on its admin console."""
    try:
        with psycopg.connect(host="127.0.0.1", port=port, dbname="pgbouncer", user=admin.user,
                             password=admin.password, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _wait_accepting(process: subprocess.Popen[bytes], port: int, admin: Login) -> bool:
    """Poll a login until PgBouncer accepts one; False if it exited first (port taken)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if _accepting(port, admin):
            return True
        # The pause between polls doubles as the check that it is still running.
        with suppress(subprocess.TimeoutExpired):
            process.wait(0.02)
            return False
    raise AssertionError(f"pgbouncer did not accept a connection in {START_TIMEOUT:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then wait for it to exit (killed if it does not)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running(admin_url: str, logins: Sequence[Login] = (), *, pool_size: int = 1
            ) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the server at ``admin_url``.

    ``logins`` may connect besides the server's admin. Every (database, login)
    pair gets ``pool_size`` server connections, shared by all its clients.
    """
    binary = require_binary()
    target = _target(admin_url)
    owner = _run_as(target)
    workdir = _prepare_workdir(target, logins, owner)
    config, log = workdir / "pgbouncer.ini", workdir / "pgbouncer.log"
    try:
        for _attempt in range(PORT_ATTEMPTS):
            port = _free_port()
            config.write_text(_config(target, port, workdir, pool_size))
            config.chmod(0o644)
            process = _start(binary, config, log, owner)
            try:
                if _wait_accepting(process, port, target.admin):
                    yield PgBouncer("127.0.0.1", port, target.admin, pool_size, process.pid)
                    return
            finally:
                _stop(process)
        raise AssertionError(f"pgbouncer did not start:\n{log.read_text()}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def login_role(admin_url: str, member_of: str = "credits_user") -> Iterator[Login]:
    """A new LOGIN role granted ``member_of`` (cluster-wide, so a unique name), dropped after."""
    login = Login(f"credits_login_{os.getpid()}_{secrets.token_hex(4)}", secrets.token_hex(16))
    role = sql.Identifier(login.user)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            role, sql.Literal(login.password)))
        admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), role))
    try:
        yield login
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
