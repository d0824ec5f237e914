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
from tests.support.helpers import (
    Conn,
    add_users,
    add_users_whose_allocation_fails,
    add_users_without_credits,
    balance,
)
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


def test_security_headers_on_every_admin_response(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        responses = [await client.get("/admin/login"), await client.get("/admin/credits"),
                     await client.get("/admin/static/admin.css")]
        await sign_in(client, token(user, admin=True))
        responses += [await client.get("/admin/credits"),
                      await client.get("/admin/credits/backfill"),
                      await client.get("/admin/credits/backfill/jobs/none"),
                      await client.get("/admin/credits/users", params={"who": "nobody"}),
                      await client.post("/admin/logout", data={"csrf": "x"})]
        assert [r.status_code for r in responses] == [200, 401, 200, 200, 200, 404, 404, 403]
        for response in responses:
            for name, value in SECURITY_HEADERS.items():
                assert response.headers.get(name) == value, (response.url, name)
        csp = SECURITY_HEADERS["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
        # No inline style or script for the CSP to block: the stylesheet is served.
        page = responses[3].text
        assert "<style" not in page and "style=" not in page and "<script" not in page
        assert '<link rel="stylesheet" href="/admin/static/admin.css">' in page
        assert responses[2].headers["content-type"].startswith("text/css")
        # The JSON API is not the admin pages' business.
        assert "X-Frame-Options" not in (await client.get("/api/credits/status")).headers

    run(db, scenario)


def test_cross_site_posts_are_refused(db: Database, conn: Conn) -> None:
    [operator] = add_users(conn, "member")
    add_users_without_credits(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        form = await client.get("/admin/login")
        login = {"token": token(operator, admin=True), "csrf": _csrf(form.text)}
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                        {"Origin": "https://evil.example"}, {"Origin": "null"}):
            refused = await client.post("/admin/login", data=login, headers=headers)
            assert refused.status_code == 403, headers
            assert TOKEN_COOKIE not in refused.headers.get("set-cookie", "")
        assert (await client.post("/admin/login", data=login, headers={
            "Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"})).status_code == 303
        page = await client.get("/admin/credits")
        csrf = {"csrf": _csrf(page.text)}
        for path in ("/admin/credits/backfill", "/admin/logout"):
            refused = await client.post(path, data=csrf, headers={"Sec-Fetch-Site": "cross-site"})
            assert refused.status_code == 403, path
        assert (await client.get("/admin/credits")).status_code == 200  # still signed in
        assert '<p class="stat" id="users-without-credits">1</p>' in \
            (await client.get("/admin/credits")).text
        # The pre-session cookie is bound to the form: another browser's token is refused.
        client.cookies.set(LOGIN_COOKIE, "A" * 43, path="/admin")
        assert (await client.post("/admin/login", data=login)).status_code == 403

    run(db, scenario)


def test_user_lookup_by_id_and_email(db: Database, conn: Conn) -> None:
    [operator, lead, member] = add_users(conn, "member", "team_admin", None)
    conn.execute("UPDATE users SET email = %s WHERE id = %s", ("lead@example.com", lead))
    conn.execute("SELECT add_team_member(%s, %s)", (lead, member))
    conn.execute("SELECT debit_credits(%s, 400, 'search', 'a <b>search</b>', 'k1')", (member,))
    [waiting] = add_users_without_credits(conn, "RecruitPro")

    async def scenario(client: httpx.AsyncClient) -> None:
        await sign_in(client, token(operator, admin=True))
        page = await client.get("/admin/credits")
        assert '<label for="who">User id or email</label>' in page.text

        by_email = await client.get("/admin/credits/users", params={"who": "lead@example.com"})
        assert by_email.status_code == 200
        assert f"<dd>{lead}</dd>" in by_email.text and "<dd>team_admin</dd>" in by_email.text
        assert "<dd>4,600</dd>" in by_email.text  # the member's 400 came from this pool
        assert "1 of 4 seats" in by_email.text
        assert "a &lt;b&gt;search&lt;/b&gt;" in by_email.text and "<b>" not in by_email.text

        by_id = await client.get("/admin/credits/users", params={"who": f" {member} "})
        assert "the member allocation" in by_id.text  # NULL role: the fallback
        assert "Spends from the pool of</dt><dd>lead@example.com, 4,600 credits left" \
            in by_id.text
        assert "signup" in by_id.text

        waits = await client.get("/admin/credits/users", params={"who": waiting})
        assert "no balance row: the next backfill allocates this user" in waits.text
        assert "awaiting_backfill: This account has no credits yet" in waits.text
        assert "No ledger rows." in waits.text

        missing = await client.get("/admin/credits/users", params={"who": "nobody@example.com"})
        assert missing.status_code == 404
        assert "No user has the id or email &#x27;nobody@example.com&#x27;." in missing.text

        conn.execute("ALTER TABLE users DROP COLUMN email")  # a host table without one
        no_column = await client.get("/admin/credits/users", params={"who": "x@example.com"})
        assert no_column.status_code == 422 and "no email column" in no_column.text
        still = await client.get("/admin/credits/users", params={"who": lead})
        assert still.status_code == 200 and "<dt>Email</dt><dd>(none)</dd>" in still.text

    run(db, scenario)


def test_user_lookup_shows_a_failed_allocation_and_the_overview(db: Database,
                                                                 conn: Conn) -> None:
    [operator] = add_users(conn, "member")
    [failed] = add_users_whose_allocation_fails(conn, "admin")

    async def scenario(client: httpx.AsyncClient) -> None:
        await sign_in(client, token(operator, admin=True))
        front = (await client.get("/admin/credits")).text
        assert "1 of them wait because their signup allocation failed" in front
        page = (await client.get("/admin/credits/users", params={"who": failed})).text
        assert "<dt>Status</dt><dd>allocation_failed: This account has no credits yet: its " \
            "signup allocation failed (23514)" in page
        assert "<dt>Signup allocation failed</dt>" in page and "test_refuse_signup" in page
        assert "<dt>GET /api/billing/overview answers</dt><dd>accountStatus allocation_failed, " \
            "remainingCredits 0, spendableCredits 0, 0 recent rows</dd>" in page
        mine = (await client.get("/admin/credits/users", params={"who": operator})).text
        assert "<dt>Status</dt><dd>active: the account has credits</dd>" in mine
        assert "accountStatus active, remainingCredits 350" in mine

    run(db, scenario)


def test_charts_and_their_tables(db: Database, conn: Conn) -> None:
    hostile = "<script>alert(1)</script>"
    [operator, lead, member, other] = add_users(conn, "member", "team_admin", "member", hostile)
    conn.execute("SELECT add_team_member(%s, %s)", (lead, member))
    conn.execute("SELECT debit_credits(%s, 25, %s, NULL, NULL)", (other, hostile))
    conn.execute("SELECT debit_credits(%s, 400, 'search', NULL, NULL)", (member,))

    async def scenario(client: httpx.AsyncClient) -> None:
        await sign_in(client, token(operator, admin=True))
        page = (await client.get("/admin/credits")).text
        assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        charts = {}
        for chart_id in ("chart-roles", "chart-daily", "chart-pools"):
            start = page.index(f'<svg xmlns="http://www.w3.org/2000/svg" role="img" '
                               f'id="{chart_id}"')
            svg = page[start:page.index("</svg>", start) + len("</svg>")]
            charts[chart_id] = ET.fromstring(svg)  # noqa: S314 (our own output)
        assert '<th scope="row">member</th>' in page  # the roles table beside its chart
        daily = ET.tostring(charts["chart-daily"], encoding="unicode")
        assert "signup (allocated): 6,050 credits" in daily
        assert "search (spent): -400 credits" in daily
        assert "&lt;script&gt;alert(1)&lt;/script&gt; (spent): -25 credits" in daily
        assert "<caption>Credits per day and source (days without entries left out)" in page
        pools = ET.tostring(charts["chart-pools"], encoding="unicode")
        assert f"{lead}, Members: 1" in pools and f"{lead}, Seats: 4" in pools
        assert f'<tr><th scope="row">{lead}</th><td class="num">1</td><td class="num">4</td>' \
               '<td class="num">4,600</td></tr>' in page
        assert "OK: every balance equals the sum of its ledger rows" in page
        assert "The ledger has no backfill allocation yet." in page

    run(db, scenario)
