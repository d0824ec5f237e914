"""The HTTP API over real PostgreSQL: every endpoint, every error mapping, and auth."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from psycopg.rows import dict_row

import credits_db
from credits_db import errors
from credits_db.http import HTTP_STATUS, ErrorMappingRoute, make_demo_token
from tests.support.databases import Database
from tests.support.helpers import (
    Conn,
    add_users,
    add_users_whose_allocation_fails,
    add_users_without_credits,
    balance,
)
from tests.support.http_api import bearer, error_of, run


def test_status_check_use_and_history(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        status = (await client.get("/api/credits/status", headers=bearer(user))).json()
        assert status == {"userId": user, "hasAccount": True, "totalCredits": 350,
                          "usedCredits": 0, "remainingCredits": 350, "ownSpendableCredits": 350,
                          "nextExpiry": None, "nextRenewal": None, "teamAdminId": None,
                          "teamPoolRemaining": None, "teamPoolSpendable": None,
                          "teamPoolNextExpiry": None, "teamPoolNextRenewal": None,
                          "spendableCredits": 350}
        check = await client.post("/api/credits/check", json={"requiredCredits": 100},
                                  headers=bearer(user))
        assert check.status_code == 200
        assert check.json() == {"hasEnoughCredits": True, "remainingCredits": 350,
                                "requiredCredits": 100}
        body = {"credits": 100, "source": "search", "idempotencyKey": "req-1"}
        used = await client.post("/api/credits/use", json=body, headers=bearer(user))
        assert used.status_code == 200
        op = used.json()
        assert (op["credits"], op["remainingCredits"], op["fromTeamPool"], op["replayed"],
                op["accountUserId"], op["actorUserId"]) == (100, 250, False, False, user, None)
        again = (await client.post("/api/credits/use", json=body, headers=bearer(user))).json()
        assert again["replayed"] and again["logId"] == op["logId"]
        assert again["remainingCredits"] == 250
        check = await client.post("/api/credits/check", json={"requiredCredits": 251},
                                  headers=bearer(user))
        assert check.json() == {"hasEnoughCredits": False, "remainingCredits": 250,
                                "requiredCredits": 251}
        history = (await client.get("/api/credits/history", headers=bearer(user))).json()
        assert [(e["amount"], e["type"], e["source"]) for e in history["entries"]] == [
            (-100, "debit", "search"), (350, "credit", "signup")]
        assert history["entries"][0]["idempotencyKey"] == "req-1"

    run(db, scenario)
    assert balance(conn, user) == (350, 100, 250)


def test_check_and_use_never_disagree(db: Database, conn: Conn) -> None:
    """``check`` reports the figure ``use`` checks: own account, else whole from the pool."""
    admin, member = add_users(conn, "team_admin", "member")
    credits_db.add_team_member(conn, admin, member)

    async def scenario(client: httpx.AsyncClient) -> None:
        for amount in (1, 350, 351, 5000, 5001):
            check = (await client.post("/api/credits/check", json={"requiredCredits": amount},
                                       headers=bearer(member))).json()
            assert check["remainingCredits"] == 5000
            assert check["hasEnoughCredits"] == (amount <= 5000)
        used = await client.post("/api/credits/use", json={"credits": 400},
                                 headers=bearer(member))
        op = used.json()
        assert op["fromTeamPool"] and op["accountUserId"] == admin
        assert op["actorUserId"] == member and op["remainingCredits"] == 4600
        status = (await client.get("/api/credits/status", headers=bearer(member))).json()
        assert (status["remainingCredits"], status["teamAdminId"], status["teamPoolRemaining"],
                status["spendableCredits"]) == (350, admin, 4600, 4600)
        refused = await client.post("/api/credits/use", json={"credits": 4601},
                                    headers=bearer(member))
        assert error_of(refused) == (402, "CR001", "InsufficientCredits")
        check = (await client.post("/api/credits/check", json={"requiredCredits": 4601},
                                   headers=bearer(member))).json()
        assert check["hasEnoughCredits"] is False

    run(db, scenario)


def test_spending_errors_map_to_documented_statuses(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")

    async def use(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
        return await client.post("/api/credits/use", json=body, headers=bearer(user))

    async def scenario(client: httpx.AsyncClient) -> None:
        assert error_of(await use(client, {"credits": 351})) == (
            402, "CR001", "InsufficientCredits")
        assert (await use(client, {"credits": 5, "idempotencyKey": "k"})).status_code == 200
        assert error_of(await use(client, {"credits": 6, "idempotencyKey": "k"})) == (
            409, "CR007", "IdempotencyConflict")
        for amount in (0, -5):
            assert error_of(await use(client, {"credits": amount})) == (
                422, "CR006", "InvalidAmount")
        # The database validates what the schema lets through (22023).
        assert error_of(await use(client, {"credits": 1, "source": ""})) == (
            422, "22023", "InvalidArgument")
        assert error_of(await use(client, {"credits": 1, "idempotencyKey": ""})) == (
            422, "22023", "InvalidArgument")

    run(db, scenario)
    assert balance(conn, user) == (350, 5, 345)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("post", "/api/credits/use", {}),
    ("post", "/api/credits/use", {"credits": "ten"}),
    ("post", "/api/credits/use", {"credits": 2**31}),
    ("post", "/api/credits/use", {"credits": 1.5}),
    ("post", "/api/credits/use", {"credits": 1, "source": "x" * 201}),
    ("post", "/api/credits/check", {"requiredCredits": 0}),
    ("post", "/api/credits/check", {}),
    ("post", "/api/credits/team-members", {"teamMemberId": "not-a-uuid"}),
    ("delete", "/api/credits/team-members/not-a-uuid", None),
    ("get", "/api/credits/history?limit=0", None),
    ("get", "/api/credits/history?limit=501", None),
    ("post", "/api/admin/backfill-credits", {"limit": 0}),
])
def test_request_validation_is_422_invalid_argument(
    db: Database, conn: Conn, method: str, path: str, body: dict[str, Any] | None
) -> None:
    [user] = add_users(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.request(method, path, json=body,
                                        headers=bearer(user, admin=True))
        assert error_of(response) == (422, "22023", "InvalidArgument")
        assert response.json()["error"]["details"]

    run(db, scenario)
    assert balance(conn, user) == (350, 0, 350)


def test_team_members(db: Database, conn: Conn) -> None:
    admin, other_admin, member, outsider, *more = add_users(
        conn, "team_admin", "team_admin", "member", "member", "member", "member", "member",
        "member")

    async def add(client: httpx.AsyncClient, who: str, member_id: str) -> httpx.Response:
        return await client.post("/api/credits/team-members", json={"teamMemberId": member_id},
                                 headers=bearer(who))

    async def scenario(client: httpx.AsyncClient) -> None:
        empty = (await client.get("/api/credits/team-members", headers=bearer(admin))).json()
        assert empty == {"teamAdminId": admin, "memberLimit": 4, "members": []}
        added = await add(client, admin, member)
        assert added.status_code == 201
        assert [m["teamMemberId"] for m in added.json()["members"]] == [member]
        assert (await add(client, admin, member)).status_code == 200  # again: a no-op, 200 not 201
        listed = (await client.get("/api/credits/team-members", headers=bearer(admin))).json()
        assert [m["teamMemberId"] for m in listed["members"]] == [member]

        assert error_of(await add(client, member, outsider)) == (403, "CR003", "NotTeamAdmin")
        assert error_of(await add(client, admin, admin)) == (
            422, "CR009", "SelfTeamMembership")
        assert error_of(await add(client, admin, str(uuid.uuid4()))) == (
            404, "CR005", "UnknownUser")
        assert error_of(await add(client, other_admin, member)) == (
            409, "CR004", "AlreadyInTeam")
        for extra in more[:3]:
            assert (await add(client, admin, extra)).status_code == 201
        assert error_of(await add(client, admin, more[3])) == (409, "CR002", "TeamFull")

        removed = await client.delete(f"/api/credits/team-members/{member}",
                                      headers=bearer(admin))
        assert removed.status_code == 200 and removed.json() == {"removed": True}
        removed = await client.delete(f"/api/credits/team-members/{member}",
                                      headers=bearer(admin))
        assert removed.json() == {"removed": False}
        # Removing is scoped to the caller's own pool: a member cannot remove others.
        not_theirs = await client.delete(f"/api/credits/team-members/{more[0]}",
                                         headers=bearer(other_admin))
        assert not_theirs.json() == {"removed": False}
        listed = (await client.get("/api/credits/team-members", headers=bearer(admin))).json()
        assert [m["teamMemberId"] for m in listed["members"]] == more[:3]
        none = (await client.get("/api/credits/team-members", headers=bearer(member))).json()
        assert none == {"teamAdminId": member, "memberLimit": 0, "members": []}

    run(db, scenario)


def test_history_limit(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "super_admin")
    for n in range(60):
        credits_db.debit(conn, user, 1, source=f"s{n}")

    async def scenario(client: httpx.AsyncClient) -> None:
        default = (await client.get("/api/credits/history", headers=bearer(user))).json()
        assert len(default["entries"]) == 50 and default["entries"][0]["source"] == "s59"
        three = (await client.get("/api/credits/history", params={"limit": 3},
                                  headers=bearer(user))).json()
        assert [e["source"] for e in three["entries"]] == ["s59", "s58", "s57"]
        every = (await client.get("/api/credits/history", params={"limit": 500},
                                  headers=bearer(user))).json()
        assert len(every["entries"]) == 61

    run(db, scenario)


def test_billing_overview_includes_pool_usage(db: Database, conn: Conn) -> None:
    admin, member, stranger = add_users(conn, "team_admin", "member", "member")
    credits_db.add_team_member(conn, admin, member)
    credits_db.debit(conn, member, 300, source="own")
    pool_debit = credits_db.debit(conn, member, 100, source="pool")
    credits_db.debit(conn, admin, 7, source="admin-own")
    credits_db.debit(conn, stranger, 1, source="stranger")

    async def scenario(client: httpx.AsyncClient) -> None:
        mine = (await client.get("/api/billing/overview", headers=bearer(member))).json()
        assert mine["credits"]["remainingCredits"] == 50
        assert mine["credits"]["teamPoolRemaining"] == 4893
        assert mine["credits"]["teamAdminId"] == admin
        rows = mine["credits"]["recentUsage"]
        assert [(r["source"], r["accountUserId"], r["actorUserId"]) for r in rows] == [
            ("pool", admin, member), ("own", member, None), ("signup", member, None)]
        assert rows[0]["id"] == pool_debit.log_id

        theirs = (await client.get("/api/billing/overview", headers=bearer(admin))).json()
        rows = theirs["credits"]["recentUsage"]
        assert [(r["source"], r["actorUserId"]) for r in rows] == [
            ("admin-own", None), ("pool", member), ("signup", None)]
        assert theirs["credits"]["remainingCredits"] == 4893

    run(db, scenario)

    for n in range(12):
        credits_db.debit(conn, member, 1, source=f"pool-{n}")

    async def last_ten(client: httpx.AsyncClient) -> None:
        rows = (await client.get("/api/billing/overview", headers=bearer(member))).json()[
            "credits"]["recentUsage"]
        assert [r["source"] for r in rows] == [f"pool-{n}" for n in range(11, 1, -1)]

    run(db, last_ten)


def test_admin_backfill(db: Database, conn: Conn) -> None:
    [operator] = add_users(conn, "member")
    waiting = add_users_without_credits(conn, "member", "team_admin", None)

    async def scenario(client: httpx.AsyncClient) -> None:
        denied = await client.post("/api/admin/backfill-credits", headers=bearer(operator))
        assert error_of(denied) == (403, "42501", "PermissionDenied")
        dry = await client.post("/api/admin/backfill-credits", json={"dryRun": True},
                                headers=bearer(operator, admin=True))
        assert dry.status_code == 200
        assert dry.json() == {"usersTotal": 4, "usersWithoutCredits": 3, "usersBackfilled": 3,
                              "creditsAllocated": 5700, "fallbackRoleUsers": 1, "dryRun": True,
                              "byRole": {"(null)": {"users": 1, "credits": 350},
                                         "member": {"users": 1, "credits": 350},
                                         "team_admin": {"users": 1, "credits": 5000}}}
        one = (await client.post("/api/admin/backfill-credits", json={"limit": 1},
                                 headers=bearer(operator, admin=True))).json()
        assert one["usersBackfilled"] == 1 and not one["dryRun"]
        rest = (await client.post("/api/admin/backfill-credits",
                                  headers=bearer(operator, admin=True))).json()
        assert rest["usersBackfilled"] == 2 and rest["usersWithoutCredits"] == 2

    assert all(balance(conn, user) is None for user in waiting)
    run(db, scenario)
    assert all(balance(conn, user) is not None for user in waiting)
    assert credits_db.verify(conn) == []


# A fixed id: it is part of the test id, which must be the same in every pytest-xdist
# worker ("Different tests were collected between gw0 and gw1" otherwise).
SOMEONE = uuid.UUID("5f0c6c3e-8a59-4c7e-9d0b-2f1e6a7b9c10")

ENDPOINTS = [
    ("get", "/api/credits/status", None),
    ("post", "/api/credits/check", {"requiredCredits": 1}),
    ("post", "/api/credits/use", {"credits": 1}),
    ("get", "/api/credits/team-members", None),
    ("post", "/api/credits/team-members", {"teamMemberId": str(uuid.uuid4())}),
    ("delete", f"/api/credits/team-members/{SOMEONE}", None),
    ("get", "/api/credits/history", None),
    ("get", "/api/billing/overview", None),
    ("post", "/api/admin/backfill-credits", None),
    ("post", "/api/admin/credits/expire", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_missing_or_invalid_token_is_401(
    db: Database, conn: Conn, method: str, path: str, body: dict[str, Any] | None
) -> None:
    [user] = add_users(conn, "member")
    forged = make_demo_token("another-secret", user, is_admin=True)
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": f"Bearer {forged}"},
        {"Authorization": "Bearer user:not-a-uuid.sig"},
        {"Authorization": f"Bearer admin:{user}"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ]

    async def scenario(client: httpx.AsyncClient) -> None:
        for headers in bad_headers:
            response = await client.request(method, path, json=body, headers=headers)
            assert error_of(response) == (401, "28000", "Unauthorized"), headers
            assert response.headers["www-authenticate"].startswith("Bearer")

    run(db, scenario)
    assert balance(conn, user) == (350, 0, 350)


def test_a_user_only_ever_reads_and_spends_their_own_credits(db: Database, conn: Conn) -> None:
    me, victim = add_users(conn, "member", "super_admin")

    async def scenario(client: httpx.AsyncClient) -> None:
        # Whatever names another user is ignored: the API acts for the token's user.
        status = await client.get("/api/credits/status", params={"userId": victim},
                                  headers=bearer(me))
        assert status.json()["userId"] == me and status.json()["totalCredits"] == 350
        used = await client.post("/api/credits/use",
                                 json={"credits": 10, "userId": victim, "user_id": victim},
                                 params={"userId": victim}, headers=bearer(me))
        assert used.json()["accountUserId"] == me
        refused = await client.post("/api/credits/use", json={"credits": 1000,
                                                               "userId": victim},
                                    headers=bearer(me))
        assert error_of(refused)[0] == 402
        history = await client.get("/api/credits/history", params={"userId": victim},
                                   headers=bearer(me))
        assert {e["accountUserId"] for e in history.json()["entries"]} == {me}
        overview = await client.get("/api/billing/overview", headers=bearer(me))
        assert {r["accountUserId"] for r in overview.json()["credits"]["recentUsage"]} == {me}
        team = await client.get("/api/credits/team-members", params={"teamAdminId": victim},
                                headers=bearer(me))
        assert team.json()["teamAdminId"] == me

    run(db, scenario)
    assert balance(conn, victim) == (10000, 0, 10000)
    assert balance(conn, me) == (350, 10, 340)


def test_unknown_caller_is_404(db: Database) -> None:
    ghost = uuid.uuid4()

    async def scenario(client: httpx.AsyncClient) -> None:
        for method, path, body in ENDPOINTS[:3] + ENDPOINTS[7:8]:
            response = await client.request(method, path, json=body, headers=bearer(ghost))
            assert error_of(response) == (404, "CR005", "UnknownUser")

    run(db, scenario)


def test_pool_with_another_row_factory_and_transactions(db: Database, conn: Conn) -> None:
    """Non-autocommit pools commit per request; a dict_row pool still works."""
    [user] = add_users(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        used = await client.post("/api/credits/use", json={"credits": 3}, headers=bearer(user))
        assert used.status_code == 200
        status = await client.get("/api/credits/status", headers=bearer(user))
        assert status.json()["remainingCredits"] == 347
        refused = await client.post("/api/credits/use", json={"credits": 9999},
                                    headers=bearer(user))
        assert error_of(refused)[0] == 402

    run(db, scenario, kwargs={"row_factory": dict_row})
    assert balance(conn, user) == (350, 3, 347)


_CODES = {
    errors.RetryableError: "40001",
    errors.ConnectionLost: "08006",
}


@pytest.mark.parametrize("cls", list(HTTP_STATUS), ids=lambda cls: cls.__name__)
def test_every_exception_has_one_status_and_the_error_body(
    cls: type[errors.CreditsError],
) -> None:
    """Each credits-db exception, raised in a route, becomes its status and body."""
    router = APIRouter(route_class=ErrorMappingRoute)

    @router.get("/raise")
    async def raise_it() -> None:
        raise cls("boom")

    app = FastAPI()
    app.include_router(router)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/raise")

    response = asyncio.run(call())
    code = cls.sqlstate or _CODES[cls]
    assert error_of(response) == (HTTP_STATUS[cls], code, cls.__name__)
    if HTTP_STATUS[cls] == 503:
        assert response.headers["retry-after"] == "1"


def test_every_translated_sqlstate_has_a_status() -> None:
    assert set(errors.SQLSTATES.values()) | {errors.ConnectionLost} == set(HTTP_STATUS)


def test_openapi_documents_camel_case_models_and_errors(db: Database) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        spec = (await client.get("/openapi.json")).json()
        assert {"/api/credits/status", "/api/credits/check", "/api/credits/use",
                "/api/credits/team-members", "/api/credits/team-members/{team_member_id}",
                "/api/credits/history", "/api/billing/overview",
                "/api/admin/backfill-credits", "/api/admin/credits/expire"} == set(spec["paths"])
        schemas = spec["components"]["schemas"]
        assert set(schemas["CheckResponse"]["properties"]) == {
            "hasEnoughCredits", "remainingCredits", "requiredCredits"}
        assert set(schemas["UseRequest"]["properties"]) == {
            "credits", "source", "description", "idempotencyKey"}
        use = spec["paths"]["/api/credits/use"]["post"]["responses"]
        assert {"200", "401", "402", "409", "422"} <= set(use)
        assert use["402"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorResponse")
        assert "bearer" in str(spec["components"]["securitySchemes"]).lower()

    run(db, scenario)


def test_billing_overview_says_why_an_account_has_no_credits_yet(db: Database, conn: Conn) -> None:
    [spent] = add_users(conn, "member")
    credits_db.debit(conn, spent, 350)
    [waiting] = add_users_without_credits(conn, "member")
    [failed] = add_users_whose_allocation_fails(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        answers = {user: (await client.get("/api/billing/overview", headers=bearer(user))).json()
                   for user in (spent, waiting, failed)}
        for answer in answers.values():
            assert answer["credits"]["remainingCredits"] == 0
        assert answers[spent]["credits"]["accountStatus"] == "active"
        assert answers[spent]["credits"]["accountMessage"] is None
        assert answers[waiting]["credits"]["accountStatus"] == "awaiting_backfill"
        assert "waiting for the credits backfill" in answers[waiting]["credits"]["accountMessage"]
        failure = answers[failed]["credits"]
        assert failure["accountStatus"] == "allocation_failed"
        assert failure["allocationFailure"]["sqlstate"] == "23514"
        assert set(failure["allocationFailure"]) == {"failedAt", "sqlstate", "message"}

    run(db, scenario)
