"""Example service: the credits-db HTTP API in a FastAPI application.

Run it (from the repository root)::

    export DATABASE_URL=postgresql://user@host/db      # credits-db installed (credits-db upgrade)
    export CREDITS_DB_API_SECRET=change-me             # HMAC secret of the demo tokens
    uvicorn examples.service:app

Mint a token for a user (a DEMO scheme: tokens never expire; use your own auth)::

    python -c 'from credits_db.http import make_demo_token as t; print(t("change-me", "<uuid>"))'

and call ``curl -H "Authorization: Bearer <token>" localhost:8000/api/credits/status``.
Admin tokens (``is_admin=True``) may backfill and open ``/admin/credits``.

What a real service replaces: ``authenticate`` (here: the demo HMAC tokens) with
its own session or JWT check that returns a :class:`credits_db.http.Caller`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from credits_db import urls
from credits_db.http import create_router, demo_token_auth


def _setting(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(f"set {name} (see examples/service.py)")
    return value


DATABASE_URL = urls.to_libpq(_setting("DATABASE_URL"))
SECRET = _setting("CREDITS_DB_API_SECRET")

# Autocommit: each credits-db call is its own transaction. The pool opens at startup.
pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
    DATABASE_URL, min_size=1, max_size=10, kwargs={"autocommit": True}, open=False,
)


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """Open the connection pool at startup and close it at shutdown."""
    await pool.open(wait=True, timeout=30)
    try:
        yield
    finally:
        await pool.close()


app = FastAPI(title="Example service with credits-db", lifespan=lifespan)
app.include_router(create_router(pool, auth=demo_token_auth(SECRET)))
