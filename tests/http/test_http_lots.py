"""Lots and expiry over HTTP: what /api/credits/status and /api/billing/overview say
expires when, expire entries in the history, and POST /api/admin/credits/expire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

import credits_db
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, add_users_without_credits, balance
from tests.support.http_api import bearer, error_of, run


def soon(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def lapse(conn: Conn, user: str, log_id: int) -> int:
    """Make the lot of one grant lapse now (as the owner); its lot id."""
    row = conn.execute("UPDATE credit_lots SET expires_at = now() - interval '1 second'"
                       " WHERE user_id = %s AND log_id = %s RETURNING id",
                       (user, log_id)).fetchone()
    assert row is not None
    return int(row[0])


def expiry(data: dict[str, Any] | None) -> tuple[datetime, int] | None:
    """An ``{expiresAt, credits}`` object as (time, credits)."""
    if data is None:
        return None
    assert set(data) == {"expiresAt", "credits"}
    return datetime.fromisoformat(data["expiresAt"]), data["credits"]


def test_status_says_what_expires_when(db: Database, conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    credits_db.add_team_member(conn, admin, member)
    in_two, in_forty = soon(2), soon(40)
    own = credits_db.grant(conn, member, 100, expires_at=in_two)
    credits_db.grant(conn, member, 20, expires_at=in_forty)
    pool = credits_db.grant(conn, admin, 300, expires_at=in_two)

    async def status(client: httpx.AsyncClient) -> dict[str, Any]:
        response = await client.get("/api/credits/status", headers=bearer(member))
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    async def before(client: httpx.AsyncClient) -> None:
        body = await status(client)
        assert (body["remainingCredits"], body["ownSpendableCredits"]) == (470, 470)
        assert expiry(body["nextExpiry"]) == (in_two, 100)
        assert (body["teamPoolRemaining"], body["teamPoolSpendable"]) == (5300, 5300)
        assert expiry(body["teamPoolNextExpiry"]) == (in_two, 300)

    run(db, before)
    lapse(conn, member, own.log_id)
    lapse(conn, admin, pool.log_id)

    async def after(client: httpx.AsyncClient) -> None:
        body = await status(client)
        assert (body["remainingCredits"], body["ownSpendableCredits"]) == (470, 370)
        assert expiry(body["nextExpiry"]) == (in_forty, 20)
        assert (body["teamPoolRemaining"], body["teamPoolSpendable"]) == (5300, 5000)
        assert body["teamPoolNextExpiry"] is None
        assert body["spendableCredits"] == 5000
        check = await client.post("/api/credits/check", json={"requiredCredits": 5001},
                                  headers=bearer(member))
        assert check.json()["hasEnoughCredits"] is False  # the lapsed pool lot does not count

    run(db, after)


def test_the_overview_lists_lots_expiring_within_30_days(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")
    in_three = soon(3)
    soonest = credits_db.grant(conn, user, 60, expires_at=in_three, priority=20,
                               source="promo")
    credits_db.grant(conn, user, 15, expires_at=soon(31))  # beyond the window
    credits_db.debit(conn, user, 10)  # priority 20 is spent first: 50 of 60 left

    async def scenario(client: httpx.AsyncClient) -> None:
        credits = (await client.get("/api/billing/overview", headers=bearer(user))).json()[
            "credits"]
        assert (credits["remainingCredits"], credits["ownSpendableCredits"]) == (415, 415)
        assert expiry(credits["nextExpiry"]) == (in_three, 50)
        assert (credits["teamPoolSpendable"], credits["teamPoolNextExpiry"]) == (None, None)
        [lot] = credits["expiringLots"]
        assert set(lot) == {"lotId", "source", "logId", "amount", "remaining", "taken",
                            "expired", "expiresAt", "priority", "createdAt", "state"}
        assert (lot["logId"], lot["source"], lot["amount"], lot["remaining"], lot["taken"],
                lot["expired"], lot["priority"], lot["state"]) == (
            soonest.log_id, "promo", 60, 50, 10, 0, 20, "open")
        assert datetime.fromisoformat(lot["expiresAt"]) == in_three

    run(db, scenario)


def renewal(data: dict[str, Any] | None) -> tuple[datetime, int, int] | None:
    """A ``{renewsAt, credits, rolloverCap}`` object as (time, credits, cap)."""
    if data is None:
        return None
    assert set(data) == {"renewsAt", "credits", "rolloverCap"}
    return datetime.fromisoformat(data["renewsAt"]), data["credits"], data["rolloverCap"]


def period_end(conn: Conn, user: str) -> datetime:
    row = conn.execute("SELECT period_ends_at FROM user_credits WHERE user_id = %s",
                       (user,)).fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def test_status_and_overview_say_when_the_next_renewal_comes(db: Database, conn: Conn) -> None:
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month', rollover_cap = 100"
                 " WHERE role = 'member'")
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month', rollover_cap = 250"
                 " WHERE role = 'team_admin'")
    admin, member, alone = add_users(conn, "team_admin", "member", "member")
    credits_db.add_team_member(conn, admin, member)
    own = (period_end(conn, member), 350, 100)
    pool = (period_end(conn, admin), 5000, 250)

    async def scenario(client: httpx.AsyncClient) -> None:
        status = (await client.get("/api/credits/status", headers=bearer(member))).json()
        assert (renewal(status["nextRenewal"]), renewal(status["teamPoolNextRenewal"])) == (
            own, pool)
        credits = (await client.get("/api/billing/overview", headers=bearer(member))).json()[
            "credits"]
        assert (renewal(credits["nextRenewal"]), renewal(credits["teamPoolNextRenewal"])) == (
            own, pool)
        # Outside a pool: the own renewal, and null for the pool's.
        status = (await client.get("/api/credits/status", headers=bearer(alone))).json()
        assert renewal(status["nextRenewal"]) == (period_end(conn, alone), 350, 100)
        assert status["teamPoolNextRenewal"] is None
        credits = (await client.get("/api/billing/overview", headers=bearer(admin))).json()[
            "credits"]
        assert (renewal(credits["nextRenewal"]), credits["teamPoolNextRenewal"]) == (pool, None)

    run(db, scenario)


def test_the_next_renewal_is_null_when_no_role_renews(db: Database, conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")  # the seeded roles give once
    credits_db.add_team_member(conn, admin, member)
    [waiting] = add_users_without_credits(conn, "member")
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month' WHERE role = 'member'")
    # The member role renews from now on: the waiting user has no account, so nothing renews.

    async def scenario(client: httpx.AsyncClient) -> None:
        for user in (admin, waiting):
            status = (await client.get("/api/credits/status", headers=bearer(user))).json()
            credits = (await client.get("/api/billing/overview", headers=bearer(user))).json()[
                "credits"]
            for body in (status, credits):
                assert (body["nextRenewal"], body["teamPoolNextRenewal"]) == (None, None)
        # The member's own account renews now (its role got an interval); the pool does not.
        status = (await client.get("/api/credits/status", headers=bearer(member))).json()
        assert renewal(status["nextRenewal"]) == (period_end(conn, member), 350, 0)
        assert status["teamPoolNextRenewal"] is None

    run(db, scenario)


def test_expire_entries_in_the_history_name_their_lot(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")
    granted = credits_db.grant(conn, user, 40, expires_at=soon(1))
    lot_id = lapse(conn, user, granted.log_id)
    credits_db.expire(conn)

    async def scenario(client: httpx.AsyncClient) -> None:
        entries = (await client.get("/api/credits/history", headers=bearer(user))).json()[
            "entries"]
        assert [(e["type"], e["amount"], e["source"], e["lotId"]) for e in entries] == [
            ("expire", -40, "expiry", lot_id), ("credit", 40, "admin_grant", None),
            ("credit", 350, "signup", None)]
        recent = (await client.get("/api/billing/overview", headers=bearer(user))).json()[
            "credits"]["recentUsage"]
        assert recent[0]["lotId"] == lot_id

    run(db, scenario)


def test_admin_expire(db: Database, conn: Conn) -> None:
    operator, user = add_users(conn, "member", "member")
    grants = [credits_db.grant(conn, user, 10 * (n + 1), expires_at=soon(1 + n))
              for n in range(3)]
    for granted in grants[:2]:
        lapse(conn, user, granted.log_id)
    admin = bearer(operator, admin=True)

    async def scenario(client: httpx.AsyncClient) -> None:
        denied = await client.post("/api/admin/credits/expire", headers=bearer(operator))
        assert error_of(denied) == (403, "42501", "PermissionDenied")
        one = await client.post("/api/admin/credits/expire", json={"limit": 1}, headers=admin)
        assert one.status_code == 200
        body = one.json()
        assert set(body) == {"lotsExpired", "creditsExpired", "accounts", "accountsSkipped",
                             "asOf"}
        assert (body["lotsExpired"], body["creditsExpired"], body["accounts"],
                body["accountsSkipped"]) == (1, 10, 1, 0)
        rest = (await client.post("/api/admin/credits/expire", headers=admin)).json()
        assert (rest["lotsExpired"], rest["creditsExpired"]) == (1, 20)
        ahead = soon(5)
        response = await client.post("/api/admin/credits/expire",
                                     json={"asOf": ahead.isoformat()}, headers=admin)
        assert response.status_code == 200, response.text
        early = response.json()
        assert (early["lotsExpired"], early["creditsExpired"]) == (1, 30)
        assert datetime.fromisoformat(early["asOf"]) == ahead

    run(db, scenario)
    assert balance(conn, user) == (410, 60, 350)
    assert credits_db.verify(conn) == []


@pytest.mark.parametrize(("body", "field"), [
    ({"asOf": "2030-01-01T00:00:00"}, "asOf"),  # no offset: never read in some time zone
    ({"asOf": 1_900_000_000}, "asOf"),  # a number is not a time
    ({"asOf": "soon"}, "asOf"),
    ({"limit": 0}, "limit"),
    ({"limit": "5"}, "limit"),
    ({"asOf": None, "limit": 1.5}, "limit"),
])
def test_admin_expire_validates_its_body(db: Database, conn: Conn, body: dict[str, Any],
                                         field: str) -> None:
    [operator] = add_users(conn, "member")

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post("/api/admin/credits/expire", json=body,
                                     headers=bearer(operator, admin=True))
        assert error_of(response) == (422, "22023", "InvalidArgument"), response.text
        assert response.json()["error"]["details"][0]["loc"][:2] == ["body", field]

    run(db, scenario)


def test_openapi_documents_the_lot_fields(db: Database) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
        renewal = {"nextRenewal", "teamPoolNextRenewal"}
        for name in ("CreditStatus", "CreditsOverview"):
            # Present in every answer, null or a RenewalOut, as the expiry fields.
            assert renewal <= set(schemas[name]["required"])
            for field in renewal:
                assert schemas[name]["properties"][field]["anyOf"] == [
                    {"$ref": "#/components/schemas/RenewalOut"}, {"type": "null"}]
        assert {"ownSpendableCredits", "nextExpiry", "teamPoolSpendable",
                "teamPoolNextExpiry"} <= set(schemas["CreditStatus"]["properties"])
        assert {"ownSpendableCredits", "nextExpiry", "teamPoolSpendable", "teamPoolNextExpiry",
                "expiringLots"} <= set(schemas["CreditsOverview"]["properties"])
        assert schemas["RenewalOut"]["required"] == ["renewsAt", "credits", "rolloverCap"]
        assert schemas["RenewalOut"]["properties"]["renewsAt"]["format"] == "date-time"
        assert schemas["LotOut"]["properties"]["state"]["enum"] == [
            "open", "lapsed", "expired", "spent"]
        assert set(schemas["ExpireRequest"]["properties"]) == {"asOf", "limit"}

    run(db, scenario)
