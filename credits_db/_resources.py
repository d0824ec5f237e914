"""Where the SQL definitions and the Alembic scripts live.

In a wheel they are package data under ``credits_db/_data``; in a checkout
(editable install, or running from the repository) they are the top-level
``sql/`` and ``alembic/`` folders.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _locate(name: str) -> Path:
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"credits-db is installed without its {name}/ folder")


def sql_dir() -> Path:
    """The folder of current SQL definitions, one concern per file."""
    return _locate("sql")


def alembic_dir() -> Path:
    """The Alembic script folder (env.py and versions/)."""
    return _locate("alembic")


def sql_files() -> list[Path]:
    """The current definitions in install order (their names sort in that order)."""
    return sorted(sql_dir().glob("*.sql"))
