"""The admin page over HTTP (no browser): sign-in cookie, confirm step, CSRF, backfill job,
security headers, login CSRF, the user lookup and the charts."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from credits_db.http import TOKEN_COOKIE
from credits_db.http.admin import SECURITY_HEADERS
from credits_db.http.auth import LOGIN_COOKIE
from tests.support.admin_page import backfill_jobs_finished, csrf_of, sign_in
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, add_users_without_credits, balance
from tests.support.http_api import SECRET, run, token

_csrf = csrf_of


def test_sign_in_confirm_and_backfill(db: Database, conn: Conn) -> None:
    [operator] = add_users(conn, "member")
    waiting = add_users_without_credits(conn, "member", "team_admin")

    async def scenario(client: httpx.AsyncClient) -> None:
        signed_out = await client.get("/admin/credits")
        assert signed_out.status_code == 401
        assert '<label for="token">Access token</label>' in signed_out.text

        # Without the sign-in form's CSRF token (login CSRF), nothing is signed in.
        forged_login = await client.post("/admin/login",
                                         data={"token": token(operator, admin=True)})
        assert forged_login.status_code == 403
        assert TOKEN_COOKIE not in forged_login.headers.get("set-cookie", "")
        signed_in = await sign_in(client, token(operator, admin=True))
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

        # The confirming POST starts a job and redirects (303) to its page: a reload
        # of that page is a GET and never runs the backfill again.
        started = await client.post("/admin/credits/backfill", data={"csrf": _csrf(confirm.text)})
        assert started.status_code == 303
        job_url = started.headers["location"]
        assert job_url.startswith("/admin/credits/backfill/jobs/")
        await backfill_jobs_finished()
        for _reload in range(2):
            done = await client.get(job_url)
            assert done.status_code == 200
            assert "Backfill complete" in done.text
            assert "Allocated 5,350 credits to 2 users." in done.text
            assert 'http-equiv="refresh"' not in done.text
        assert _backfill_rows(conn) == 2

        after = await client.get("/admin/credits")
        assert '<p class="stat" id="users-without-credits">0</p>' in after.text
        assert "All time: 2 users allocated by backfill, 5,350 credits." in after.text
        assert "Allocated 5,350 credits to 2 users." in after.text  # this process's last run

        # Logout is a POST with the CSRF token too.
        assert (await client.post("/admin/logout", data={"csrf": "0" * 64})).status_code == 403
        assert (await client.get("/admin/credits")).status_code == 200
        signed_out = await client.post("/admin/logout", data={"csrf": _csrf(after.text)})
        assert signed_out.status_code == 303
        assert (await client.get("/admin/credits")).status_code == 401

    run(db, scenario)
    assert all(balance(conn, user) is not None for user in waiting)


def _backfill_rows(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM credit_usage_log WHERE source = 'backfill'"
                       ).fetchone()
    assert row is not None
    return int(row[0])


def test_login_by_query_token_and_non_admins(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        form = await client.get("/admin/login")
        assert form.status_code == 200 and 'type="password"' in form.text
        # A sign-in link shows the form and sets no session cookie (login CSRF).
        response = await client.get("/admin/login", params={"token": token(user)})
        assert response.status_code == 200
        assert "Sign-in links are not accepted" in response.text
        assert TOKEN_COOKIE not in response.headers.get("set-cookie", "")
        assert (await client.get("/admin/credits")).status_code == 401
        assert (await sign_in(client, token(user))).status_code == 303
        denied = await client.get("/admin/credits")
        assert denied.status_code == 403 and "PermissionDenied" in denied.text
        assert (await client.get("/admin/credits/backfill")).status_code == 403
        assert (await client.post("/admin/credits/backfill", data={"csrf": "x"})).status_code \
            == 403
        client.cookies.set(TOKEN_COOKIE, "garbage", path="/admin")
        invalid = await client.get("/admin/credits")
        assert invalid.status_code == 401 and "the token is invalid" in invalid.text
        form = await client.get("/admin/login")
        empty = await client.post("/admin/login", data={"token": "", "csrf": _csrf(form.text)})
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
