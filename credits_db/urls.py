"""Database URLs: accept what people paste, hand each library what it needs.

Supabase, Heroku and ``psql`` print libpq URLs (``postgresql://`` or
``postgres://``); SQLAlchemy wants a driver-qualified one
(``postgresql+psycopg://``). Every entry point accepts any of these.
"""

from __future__ import annotations

import os
from urllib.parse import quote, urlsplit, urlunsplit

_LIBPQ_SCHEMES = ("postgresql://", "postgres://")
_SQLALCHEMY_PREFIX = "postgresql+"


class InvalidDatabaseUrl(ValueError):
    """The text given as a database URL is not a PostgreSQL URL."""


def _split_scheme(url: str) -> tuple[str, str]:
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    known = scheme in ("postgresql", "postgres") or scheme.startswith(_SQLALCHEMY_PREFIX)
    if not sep or not known:
        raise InvalidDatabaseUrl(
            f"not a PostgreSQL URL: {redact(url)!r} "
            "(expected postgresql://user@host:port/dbname or postgresql+psycopg://...)"
        )
    return scheme, rest


def to_libpq(url: str) -> str:
    """The URL in the form libpq and psycopg accept (``postgresql://``)."""
    _scheme, rest = _split_scheme(url)
    return f"postgresql://{rest}"


def to_sqlalchemy(url: str) -> str:
    """The URL in the form SQLAlchemy needs to pick psycopg 3 (``postgresql+psycopg://``)."""
    _scheme, rest = _split_scheme(url)
    return f"postgresql+psycopg://{rest}"


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def from_environment() -> str | None:
    """``DATABASE_URL`` if it is set and not empty."""
    value = os.environ.get("DATABASE_URL", "").strip()
    return value or None


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database (query options kept)."""
    parts = urlsplit(to_libpq(url))
    return urlunsplit(parts._replace(path="/" + quote(database)))
