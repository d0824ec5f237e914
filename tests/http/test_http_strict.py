"""Strict HTTP (issue 15 item 3): JSON types, one error envelope, a body cap before
parsing, offline /docs, bearer tokens only, 200 on a no-op add, and history pages."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from fastapi import APIRouter, FastAPI
from psycopg_pool import AsyncConnectionPool

import credits_db
from credits_db import errors
from credits_db.http import TOKEN_COOKIE, ErrorMappingRoute, create_app, demo_token_auth
from credits_db.http.errors import error_content
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, add_users_without_credits, balance
from tests.support.http_api import SECRET, bearer, error_of, run, token

Scenario = Callable[[httpx.AsyncClient], Awaitable[None]]


@asynccontextmanager
async def app_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on ``app`` in process, its lifespan (the pool) running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def run_app(db: Database, scenario: Scenario, **options: Any) -> None:
    """``scenario`` against ``create_app`` on ``db`` (router, error handlers, cap, docs)."""

    async def main() -> None:
        async with app_client(create_app(db.url, demo_token_auth(SECRET), **options)) as client:
            await scenario(client)

    asyncio.run(main())


# --------------------------------------------------------------------------- JSON types


@pytest.mark.parametrize("amount", ["10", "1", True, False, 1.5, None, [1], {"n": 1}])
def test_only_a_json_integer_is_an_amount(db: Database, conn: Conn, amount: Any) -> None:
    [user] = add_users(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        for path, field in (("/api/credits/use", "credits"),
                            ("/api/credits/check", "requiredCredits")):
            response = await client.post(path, json={field: amount}, headers=bearer(user))
            assert error_of(response) == (422, "22023", "InvalidArgument"), response.text
            assert response.json()["error"]["details"][0]["loc"] == ["body", field]

    run(db, scenario)
    assert balance(conn, user) == (350, 0, 350)


def test_an_integer_written_with_a_zero_fraction_is_an_integer(db: Database, conn: Conn) -> None:
    """JSON Schema's integer: ``2.0`` is the integer 2 (schemathesis sends it)."""
    [user] = add_users(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        used = await client.post("/api/credits/use", json={"credits": 2.0}, headers=bearer(user))
        assert used.status_code == 200 and used.json()["credits"] == 2

    run(db, scenario)
    assert balance(conn, user) == (350, 2, 348)


@pytest.mark.parametrize("dry_run", [0, 1, "off", "false", "true", None, [], {}])
def test_dry_run_is_a_json_boolean_only(db: Database, conn: Conn, dry_run: Any) -> None:
    """``{"dryRun": 0}`` or ``"off"`` ran a real backfill: now it runs nothing."""
    [waiting] = add_users_without_credits(conn, "member")
    [admin] = add_users(conn, "super_admin")

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post("/api/admin/backfill-credits", json={"dryRun": dry_run},
                                     headers=bearer(admin, admin=True))
        assert error_of(response) == (422, "22023", "InvalidArgument")
        assert response.json()["error"]["details"][0]["loc"] == ["body", "dryRun"]

    run(db, scenario)
    assert balance(conn, waiting) is None


# --------------------------------------------------------------------------- text and NUL


@pytest.mark.parametrize("field", ["source", "description", "idempotencyKey"])
def test_a_nul_in_text_is_422_naming_the_field(db: Database, conn: Conn, field: str) -> None:
    [user] = add_users(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post("/api/credits/use", json={"credits": 1, field: "a\x00b"},
                                     headers=bearer(user))
        assert error_of(response) == (422, "22023", "InvalidArgument")
        assert response.json()["error"]["message"] == (
            f"{field}: must not contain a NUL character (\\u0000)")

    run(db, scenario)
    assert balance(conn, user) == (350, 0, 350)


@pytest.mark.parametrize("argument", ["source", "description", "idempotency_key"])
def test_the_python_api_refuses_a_nul_before_sending(conn: Conn, argument: str) -> None:
    """psycopg refuses NUL on the client with no SQLSTATE: InvalidArgument names it first."""
    [user] = add_users(conn, "member")
    with pytest.raises(errors.InvalidArgument, match=f"{argument} must not contain a NUL") as caught:
        credits_db.debit(conn, user, 1, **{argument: "a\x00b"})
    assert caught.value.field == argument and caught.value.__cause__ is None
    assert balance(conn, user) == (350, 0, 350)


def test_text_fields_have_the_minimum_length_the_server_enforces(db: Database) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        schema = (await client.get("/openapi.json")).json()
        use = schema["components"]["schemas"]["UseRequest"]["properties"]
        assert use["source"]["minLength"] == 1
        key = next(s for s in use["idempotencyKey"]["anyOf"] if s.get("type") == "string")
        assert key["minLength"] == 1 and key["pattern"] == "^[^\\x00]*$"
        limit = schema["components"]["schemas"]["BackfillRequest"]["properties"]["limit"]
        assert {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}.items() <= (
            limit["anyOf"][0].items())

    run_app(db, scenario)


@pytest.mark.parametrize(("argument", "api_field", "message"), [
    ("source", "source", "source must be a non-empty text"),
    ("idempotency_key", "idempotencyKey", "idempotencyKey must be NULL or 1 to 255 characters"),
])
def test_messages_name_api_fields_never_sql_parameters(
    conn: Conn, argument: str, api_field: str, message: str
) -> None:
    """What still reaches the SQL keeps its message in Python, and names the field over HTTP."""
    [user] = add_users(conn, "member")
    with pytest.raises(errors.InvalidArgument) as caught:
        credits_db.debit(conn, user, 1, **{argument: ""})
    assert caught.value.message.startswith(f"p_{argument} ")
    assert caught.value.field == argument
    status, body = error_content(caught.value)
    assert status == 422
    assert body["error"]["message"] == message and body["error"]["field"] == api_field
    assert "p_" not in body["error"]["message"]


# --------------------------------------------------------------------------- the envelope


@pytest.mark.parametrize("body", [
    b'{"credits": ',
    b'{"credits": 1, "source": "\xff\xfe"}',
    b"[" * 20_000 + b"]" * 20_000,
    b"\x00",
])
def test_a_body_that_is_not_json_is_400_in_the_envelope(
    db: Database, conn: Conn, body: bytes
) -> None:
    [user] = add_users(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post("/api/credits/use", content=body, headers={
            **bearer(user), "Content-Type": "application/json"})
        assert error_of(response) == (400, "22P02", "InvalidArgument")
        assert response.json()["error"]["message"].startswith(
            "the request body is not valid JSON")

    run(db, scenario)
    assert balance(conn, user) == (350, 0, 350)


def test_unknown_paths_and_methods_answer_in_the_envelope(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        missing = await client.get("/api/credits/nothing-here", headers=bearer(user))
        assert error_of(missing) == (404, "42704", "NotFound")
        wrong = await client.put("/api/credits/team-members", headers=bearer(user))
        assert error_of(wrong) == (405, "42601", "MethodNotAllowed")
        assert wrong.headers["allow"] == "GET, OPTIONS, POST"

    run_app(db, scenario)


@pytest.mark.parametrize(("path", "allow"), [
    ("/api/credits/team-members", "GET, OPTIONS, POST"),
    ("/api/credits/use", "OPTIONS, POST"),
    ("/api/credits/team-members/00000000-0000-0000-0000-000000000001", "DELETE, OPTIONS"),
])
def test_options_answers_every_allowed_method(db: Database, path: str, allow: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.options(path)
        assert response.status_code == 204 and response.headers["allow"] == allow

    run_app(db, scenario)


def test_an_unmapped_error_is_logged_with_its_traceback_and_answered_500(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A database error credits-db has no exception for (22012) used to be a silent 500."""
    async def main() -> None:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            db.url, min_size=1, max_size=1, open=False, kwargs={"autocommit": True})
        await pool.open(wait=True, timeout=30)
        router = APIRouter(route_class=ErrorMappingRoute)

        @router.get("/divide")
        async def divide() -> int:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1 / 0")
            return 0

        @router.get("/bug")
        async def bug() -> int:
            raise RuntimeError("a bug in a route")

        app = FastAPI()
        app.include_router(router)
        try:
            async with app_client(app) as client:
                for path in ("/divide", "/bug"):
                    response = await client.get(path)
                    assert error_of(response) == (500, "XX000", "InternalError")
                    assert "1 / 0" not in response.text and "bug" not in response.text
        finally:
            await pool.close()

    with caplog.at_level(logging.ERROR, logger="credits_db.http"):
        asyncio.run(main())
    logged = [r for r in caplog.records if r.name == "credits_db.http"]
    assert [r.getMessage() for r in logged] == ["GET /divide failed", "GET /bug failed"]
    assert isinstance(logged[0].exc_info and logged[0].exc_info[1], psycopg.errors.DivisionByZero)
    assert isinstance(logged[1].exc_info and logged[1].exc_info[1], RuntimeError)


# --------------------------------------------------------------------------- the body cap


def test_a_body_over_the_cap_is_413_before_authentication(db: Database) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        small = await client.post("/api/credits/use", content=b"{}" + b" " * 1000,
                                  headers={"Content-Type": "application/json"})
        assert error_of(small) == (401, "28000", "Unauthorized")
        large = await client.post("/api/credits/use", content=b" " * 1025,
                                  headers={"Content-Type": "application/json"})
        assert error_of(large) == (413, "54000", "PayloadTooLarge")

    run_app(db, scenario, max_body_size=1024)


def test_a_streamed_body_is_cut_off_at_the_cap(db: Database, conn: Conn) -> None:
    """No Content-Length (chunked): the app stops reading once past the cap."""
    [user] = add_users(conn, "member")
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10_000):  # 10 MB if it were all read
            sent.append(1)
            yield b" " * 1000

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post("/api/credits/use", content=chunks(), headers={
            **bearer(user), "Content-Type": "application/json"})
        assert "content-length" not in response.request.headers
        assert error_of(response) == (413, "54000", "PayloadTooLarge")

    run_app(db, scenario, max_body_size=4096)
    assert len(sent) <= 6  # the cap (4 chunks), the one past it, and no more


# --------------------------------------------------------------------------- /docs offline


def test_docs_use_only_same_origin_assets_and_they_answer(db: Database) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        page = await client.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:href|src)=["']([^"']+)["']|url: *["']([^"']+)["']""", page.text)
        references = [a or b for a, b in urls]
        assert len(references) >= 4, page.text  # style, icon, script, schema
        assert "http://" not in page.text and "https://" not in page.text
        for reference in references:
            parts = urlsplit(reference)
            assert not parts.scheme and not parts.netloc and reference.startswith("/"), reference
            assert (await client.get(reference)).status_code == 200, reference
        script = await client.get("/docs/assets/swagger-ui-bundle.js")
        assert "javascript" in script.headers["content-type"] and len(script.content) > 100_000

    run_app(db, scenario)


# --------------------------------------------------------------------------- auth and team


def test_the_json_api_takes_bearer_tokens_only_never_the_cookie(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "super_admin")

    async def scenario(client: httpx.AsyncClient) -> None:
        cookie = {"Cookie": f"theme=dark; {TOKEN_COOKIE}={token(user, admin=True)}"}
        for method, path in (("get", "/api/credits/status"),
                             ("post", "/api/admin/backfill-credits")):
            response = await client.request(method, path, headers=cookie)
            assert error_of(response) == (401, "28000", "Unauthorized"), path
        assert (await client.get("/api/credits/status", headers=bearer(user))).status_code == 200
        # The admin pages still sign in with the cookie.
        page = await client.get("/admin/credits", headers=cookie)
        assert page.status_code == 200 and "Backfill Credits" in page.text

    run(db, scenario)


def test_re_adding_a_member_answers_200_not_201(db: Database, conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        def add() -> Awaitable[httpx.Response]:
            return client.post("/api/credits/team-members", json={"teamMemberId": member},
                               headers=bearer(admin))
        first, again = await add(), await add()
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json() == again.json()
        assert [m["teamMemberId"] for m in again.json()["members"]] == [member]

    run(db, scenario)


# --------------------------------------------------------------------------- history pages


def test_history_pages_with_a_keyset_cursor(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "super_admin")
    for n in range(7):
        credits_db.debit(conn, user, 1, source=f"s{n}")
    newest_first = [f"s{n}" for n in reversed(range(7))] + ["signup"]

    async def scenario(client: httpx.AsyncClient) -> None:
        async def page(cursor: str | None) -> dict[str, Any]:
            params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            response = await client.get("/api/credits/history", params=params,
                                        headers=bearer(user))
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        first = await page(None)
        credits_db.debit(conn, user, 1, source="late")  # newer than every page: shifts none
        second = await page(first["nextCursor"])
        third = await page(second["nextCursor"])
        sources = [e["source"] for p in (first, second, third) for e in p["entries"]]
        assert sources == newest_first
        assert [len(p["entries"]) for p in (first, second, third)] == [3, 3, 2]
        assert third["nextCursor"] is None
        for bad in ("abc", "0", "-1", "1" * 19):
            response = await client.get("/api/credits/history", params={"cursor": bad},
                                        headers=bearer(user))
            assert error_of(response) == (422, "22023", "InvalidArgument"), bad
        # Another account's row as a cursor: an empty page, nothing of theirs.
        [other] = add_users(conn, "member")
        [theirs] = credits_db.history(conn, other, limit=1)
        foreign = await page(str(theirs.id))
        assert foreign == {"entries": [], "nextCursor": None}

    run(db, scenario)


def test_history_page_in_python_walks_the_whole_ledger(conn: Conn) -> None:
    [user] = add_users(conn, "super_admin")
    for n in range(5):
        credits_db.debit(conn, user, 1, source=f"s{n}")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = credits_db.history_page(conn, user, limit=2, cursor=cursor)
        seen += [e.source for e in page.entries]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3 and seen == ["s4", "s3", "s2", "s1", "s0", "signup"]
    assert credits_db.history(conn, user, limit=2, cursor=cursor) == page.entries
    with pytest.raises(errors.InvalidArgument, match="cursor") as caught:
        credits_db.history_page(conn, user, cursor="not-a-cursor")
    assert caught.value.field == "cursor"
