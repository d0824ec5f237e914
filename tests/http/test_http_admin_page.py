"""The admin page over HTTP (no browser): sign-in cookie, confirm step, CSRF, backfill."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from credits_db.http import TOKEN_COOKIE
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, add_users_without_credits, balance
from tests.support.http_api import SECRET, run, token


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match is not None, html
    return match.group(1)


def test_sign_in_confirm_and_backfill(db: Database, conn: Conn) -> None:
    [operator] = add_users(conn, "member")
    waiting = add_users_without_credits(conn, "member", "team_admin")

    async def scenario(client: httpx.AsyncClient) -> None:
        signed_out = await client.get("/admin/credits")
        assert signed_out.status_code == 401
        assert '<label for="token">Access token</label>' in signed_out.text

        signed_in = await client.post("/admin/login", data={"token": token(operator, admin=True)})
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/admin/credits"
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith(f"{TOKEN_COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie

        page = await client.get("/admin/credits")
        assert page.status_code == 200
        assert '<p class="stat" id="users-without-credits">2</p>' in page.text
        assert '<th scope="row">team_admin</th>' in page.text
        assert 'role="status" aria-live="polite"' in page.text
        assert '<button type="submit" id="backfill">Backfill Credits</button>' in page.text

        confirm = await client.get("/admin/credits/backfill")
        assert confirm.status_code == 200
        assert "2 users have no credits. The backfill will allocate 5,350 credits" in confirm.text
        assert "Confirm backfill" in confirm.text and ">Cancel</a>" in confirm.text
        assert all(balance(conn, user) is None for user in waiting)  # the preview wrote nothing

        forged = await client.post("/admin/credits/backfill", data={"csrf": "0" * 64})
        assert forged.status_code == 403
        assert all(balance(conn, user) is None for user in waiting)

        done = await client.post("/admin/credits/backfill", data={"csrf": _csrf(confirm.text)})
        assert done.status_code == 200
        assert "Backfill complete" in done.text
        assert "Allocated 5,350 credits to 2 users." in done.text
        assert '<p class="stat" id="users-without-credits">0</p>' in done.text

        signed_out = await client.post("/admin/logout")
        assert signed_out.status_code == 303
        assert (await client.get("/admin/credits")).status_code == 401

    run(db, scenario)
    assert all(balance(conn, user) is not None for user in waiting)


def test_login_by_query_token_and_non_admins(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        form = await client.get("/admin/login")
        assert form.status_code == 200 and 'type="password"' in form.text
        response = await client.get("/admin/login", params={"token": token(user)})
        assert response.status_code == 303
        denied = await client.get("/admin/credits")
        assert denied.status_code == 403 and "PermissionDenied" in denied.text
        assert (await client.get("/admin/credits/backfill")).status_code == 403
        assert (await client.post("/admin/credits/backfill", data={"csrf": "x"})).status_code \
            == 403
        client.cookies.set(TOKEN_COOKIE, "garbage", path="/admin")
        invalid = await client.get("/admin/credits")
        assert invalid.status_code == 401 and "the token is invalid" in invalid.text
        empty = await client.post("/admin/login", data={"token": ""})
        assert empty.status_code == 422

    run(db, scenario)


def test_bearer_header_works_for_the_page_and_json_is_refused(
        db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")
    headers = {"Authorization": f"Bearer {token(user, admin=True)}"}

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/admin/credits", headers=headers)).status_code == 200
        # The backfill form must be a form post carrying the CSRF token.
        as_json = await client.post("/admin/credits/backfill", json={"csrf": "x"},
                                    headers=headers)
        assert as_json.status_code == 415

    run(db, scenario)


@asynccontextmanager
async def _example_client(monkeypatch: pytest.MonkeyPatch, db: Database
                          ) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("DATABASE_URL", db.url)
    monkeypatch.setenv("CREDITS_DB_API_SECRET", SECRET)
    monkeypatch.delitem(__import__("sys").modules, "examples.service", raising=False)
    from examples import service

    async with service.app.router.lifespan_context(service.app):
        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


def test_example_service(monkeypatch: pytest.MonkeyPatch, db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "admin")

    async def scenario() -> None:
        async with _example_client(monkeypatch, db) as client:
            status = await client.get("/api/credits/status",
                                      headers={"Authorization": f"Bearer {token(user)}"})
            assert status.status_code == 200 and status.json()["remainingCredits"] == 1000
            assert (await client.get("/api/credits/status")).status_code == 401

    asyncio.run(scenario())
