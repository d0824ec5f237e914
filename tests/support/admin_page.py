"""Shared set-up of the admin page tests (no tests here): signing in, CSRF tokens,
the admin router alone with a chosen batch size, and waiting for a backfill job."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from credits_db.http import demo_token_auth
from credits_db.http.admin import admin_router
from tests.support.databases import Database
from tests.support.http_api import SECRET

JOB_TASK_PREFIX = "credits-db backfill "
POLL_TIMEOUT = 30.0


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    """Open the sign-in form and post it with ``token`` (the client keeps the cookies)."""
    form = await client.get("/admin/login")
    assert form.status_code == 200, form.text
    return await client.post("/admin/login", data={"token": token, "csrf": csrf_of(form.text)})


async def backfill_jobs_finished() -> None:
    """Await every backfill job task of this event loop (the jobs name their tasks)."""
    tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith(JOB_TASK_PREFIX)]
    await asyncio.gather(*tasks)


async def lock_waiter_appears(observer: psycopg.AsyncConnection[Any]) -> None:
    """Return once a session of this database waits for a lock (asked of the server)."""
    deadline = time.monotonic() + POLL_TIMEOUT
    while time.monotonic() < deadline:
        cursor = await observer.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND cardinality(pg_blocking_pids(pid)) > 0)")
        if await cursor.fetchone() == (True,):
            return
    raise AssertionError("no session started waiting for a lock")


@asynccontextmanager
async def admin_client(db: Database, *, batch_size: int, **pool_kwargs: Any
                       ) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on an app serving only the admin router, with ``batch_size``."""
    pool_kwargs.setdefault("kwargs", {"autocommit": True})
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db.url, min_size=1, max_size=4, open=False, **pool_kwargs)
    await pool.open(wait=True, timeout=30)
    app = FastAPI()
    app.include_router(admin_router(pool, demo_token_auth(SECRET),
                                    backfill_batch_size=batch_size))
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
    finally:
        await pool.close()


def run_admin(db: Database, scenario: Callable[[httpx.AsyncClient], Awaitable[None]], *,
              batch_size: int = 1, **pool_kwargs: Any) -> None:
    """Run ``scenario(client)`` on :func:`admin_client` to completion."""

    async def main() -> None:
        async with admin_client(db, batch_size=batch_size, **pool_kwargs) as client:
            await scenario(client)

    asyncio.run(main())
