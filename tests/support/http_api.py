"""Shared set-up of the HTTP API tests (no tests here): the router on a pool, an httpx client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import httpx
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from credits_db.http import create_router, demo_token_auth, make_demo_token
from tests.support.databases import Database

SECRET = "test-secret-not-for-production"  # noqa: S105


def token(user_id: str | UUID, *, admin: bool = False) -> str:
    """A valid demo token for ``user_id``."""
    return make_demo_token(SECRET, user_id, is_admin=admin)


def bearer(user_id: str | UUID, *, admin: bool = False) -> dict[str, str]:
    """The Authorization header of ``user_id``."""
    return {"Authorization": f"Bearer {token(user_id, admin=admin)}"}


def build_app(pool: AsyncConnectionPool[Any]) -> FastAPI:
    """The router on ``pool`` with the demo auth, in an otherwise empty app."""
    app = FastAPI()
    app.include_router(create_router(pool, demo_token_auth(SECRET)))
    return app


@asynccontextmanager
async def api_client(db: Database, **pool_kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling the app in process (no server), on a pool to ``db``."""
    pool_kwargs.setdefault("kwargs", {"autocommit": True})
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db.url, min_size=1, max_size=4, open=False, **pool_kwargs)
    await pool.open(wait=True, timeout=30)
    try:
        transport = httpx.ASGITransport(app=build_app(pool))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
    finally:
        await pool.close()


def run(db: Database, scenario: Callable[[httpx.AsyncClient], Awaitable[None]],
        **pool_kwargs: Any) -> None:
    """Run ``scenario(client)`` to completion (no pytest-asyncio needed)."""

    async def main() -> None:
        async with api_client(db, **pool_kwargs) as client:
            await scenario(client)

    asyncio.run(main())


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    """(status, code, type) of an error response, checking the body's shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "type", "message"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"]
    return response.status_code, error["code"], error["type"]
