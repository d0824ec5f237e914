"""The credits API as a FastAPI router: ``/api/credits/*``, ``/api/billing/overview``,
``/api/admin/backfill-credits`` and ``/api/admin/credits/expire`` (JSON), with the admin
pages (``/admin/*``, HTML).

The API never takes a user id for balances or spending: it always acts for the
caller, so a user can never read or spend another user's credits.
"""

from collections.abc import Callable, Coroutine, MutableMapping
from typing import Annotated, Any
from uuid import UUID

import psycopg
from fastapi import APIRouter, Body, Depends, Query, Request, Response

from credits_db import aio
from credits_db._execute import arun
from credits_db.http._queries import Pool, is_team_member, team_member_limit
from credits_db.http.admin import admin_router
from credits_db.http.auth import TOKEN_COOKIE, AuthDependency, Caller, require_admin
from credits_db.http.errors import ErrorMappingRoute, error_responses
from credits_db.http.schemas import (
    AddTeamMemberRequest,
    BackfillRequest,
    BackfillResult,
    BillingOverview,
    CheckRequest,
    CheckResponse,
    CreditsOverview,
    CreditStatus,
    ExpireRequest,
    ExpireResult,
    History,
    LedgerRow,
    Operation,
    RemovedResponse,
    TeamMemberOut,
    TeamMembers,
    UseRequest,
)

HISTORY_MAX = 500
class BearerOnlyRoute(ErrorMappingRoute):
    """A JSON API route: the admin pages' cookie (:data:`TOKEN_COOKIE`) never reaches it.

    Whatever ``auth`` reads (:func:`request_token` falls back to the cookie), a
    JSON endpoint authenticates by the ``Authorization`` header only: a page on
    another site can make a browser send a cookie, never a header.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, on the request less the token cookie."""
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            _drop_cookie(request.scope, TOKEN_COOKIE)
            return await handler(request)

        return handle


def _drop_cookie(scope: MutableMapping[str, Any], name: str) -> None:
    """Remove the cookie ``name`` from the request's ``Cookie`` headers (before anything
    has parsed them: Starlette reads the headers lazily)."""
    headers: list[tuple[bytes, bytes]] = []
    for key, value in scope.get("headers", []):
        if key.lower() == b"cookie":
            kept = [part for part in value.split(b";")
                    if part.strip().partition(b"=")[0].strip() != name.encode()]
            if not any(part.strip() for part in kept):
                continue
            value = b";".join(kept)
        headers.append((key, value))
    scope["headers"] = headers


def create_router(pool: Pool, auth: AuthDependency) -> APIRouter:
    """The credits API and admin page as a FastAPI router.

    Parameters:
        pool: psycopg_pool ``AsyncConnectionPool`` on a database with credits-db
            installed. Autocommit connections are recommended (each call is then
            one transaction); otherwise every request commits when it succeeds.
        auth: a FastAPI dependency returning the :class:`Caller`; it should raise
            ``HTTPException(401)`` for a missing or invalid credential, and accept
            the :data:`TOKEN_COOKIE` cookie (see :func:`request_token`) if the
            admin page is used.

    Routes: ``/api/credits/*``, ``/api/billing/overview``,
    ``/api/admin/backfill-credits``, ``/api/admin/credits/expire`` (JSON) and
    ``/admin/*`` (HTML).
    """
    router = APIRouter(route_class=BearerOnlyRoute)
    for add_routes in (_add_credit_routes, _add_team_routes, _add_ledger_routes,
                       _add_admin_routes):
        add_routes(router, pool, auth)
    router.include_router(admin_router(pool, auth))
    return router


def _add_credit_routes(router: APIRouter, pool: Pool, auth: AuthDependency) -> None:
    """``/api/credits/status``, ``/check`` and ``/use``: the caller's balance and spending."""
    CallerDep = Annotated[Caller, Depends(auth)]  # noqa: N806

    @router.get("/api/credits/status", response_model=CreditStatus, tags=["credits"],
                responses=error_responses(401, 404, 503))
    async def credit_status(caller: CallerDep) -> "CreditStatus":
        """The caller's own balance, team pool, spendable amount and next expiry."""
        async with pool.connection() as conn:
            return CreditStatus.of(await aio.balance(conn, caller.user_id))

    @router.post("/api/credits/check", response_model=CheckResponse, tags=["credits"],
                 responses=error_responses(400, 401, 404, 413, 422, 503))
    async def check_credits(caller: CallerDep, body: CheckRequest) -> CheckResponse:
        """Whether one ``/use`` call of ``requiredCredits`` would succeed now.

        Uses the same ``spendable`` figure the debit checks (own account, else the
        whole amount from the team pool), so check and spend never disagree.
        """
        async with pool.connection() as conn:
            balance = await aio.balance(conn, caller.user_id)
        return CheckResponse(has_enough_credits=balance.spendable >= body.required_credits,
                             remaining_credits=balance.spendable,
                             required_credits=body.required_credits)

    @router.post("/api/credits/use", response_model=Operation, tags=["credits"],
                 responses=error_responses(400, 401, 402, 404, 409, 413, 422, 503))
    async def use_credits(caller: CallerDep, body: UseRequest) -> "Operation":
        """Spend credits for the caller: own account first, else whole from the team pool."""
        async with pool.connection() as conn:
            op = await aio.debit(conn, caller.user_id, body.credits, source=body.source,
                                 description=body.description,
                                 idempotency_key=body.idempotency_key)
        return Operation.of(op)


def _add_team_routes(router: APIRouter, pool: Pool, auth: AuthDependency) -> None:
    """``/api/credits/team-members``: the caller's team pool (list, add, remove)."""
    CallerDep = Annotated[Caller, Depends(auth)]  # noqa: N806

    async def team(conn: psycopg.AsyncConnection[Any], caller: Caller) -> TeamMembers:
        members = await aio.list_team_members(conn, caller.user_id)
        return TeamMembers(team_admin_id=caller.user_id,
                           member_limit=await arun(conn, team_member_limit(caller.user_id)),
                           members=[TeamMemberOut.of(m) for m in members])

    @router.get("/api/credits/team-members", response_model=TeamMembers, tags=["credits"],
                responses=error_responses(401, 503))
    async def list_team_members(caller: CallerDep) -> TeamMembers:
        """The members of the caller's team pool (the caller is the team admin)."""
        async with pool.connection() as conn:
            return await team(conn, caller)

    @router.post("/api/credits/team-members", response_model=TeamMembers, status_code=201,
                 tags=["credits"], responses={
                     200: {"model": TeamMembers,
                           "description": "They were in the pool already: nothing changed."},
                     **error_responses(400, 401, 403, 404, 409, 413, 422, 503)})
    async def add_team_member(caller: CallerDep, body: AddTeamMemberRequest,
                              response: Response) -> TeamMembers:
        """Add a user to the caller's pool; returns the pool.

        201 when this request added them, 200 when they were in the pool already
        (a no-op).
        """
        async with pool.connection() as conn:
            if await arun(conn, is_team_member(caller.user_id, body.team_member_id)):
                response.status_code = 200
            await aio.add_team_member(conn, caller.user_id, body.team_member_id)
            return await team(conn, caller)

    @router.delete("/api/credits/team-members/{team_member_id}", response_model=RemovedResponse,
                   tags=["credits"], responses=error_responses(401, 422, 503))
    async def remove_team_member(caller: CallerDep, team_member_id: UUID) -> RemovedResponse:
        """Remove a member from the caller's pool; ``removed`` is false if they were not in it."""
        async with pool.connection() as conn:
            removed = await aio.remove_team_member(conn, caller.user_id, team_member_id)
        return RemovedResponse(removed=removed)


def _add_ledger_routes(router: APIRouter, pool: Pool, auth: AuthDependency) -> None:
    """``/api/credits/history`` and ``/api/billing/overview``: the caller's ledger rows."""
    CallerDep = Annotated[Caller, Depends(auth)]  # noqa: N806

    @router.get("/api/credits/history", response_model=History, tags=["credits"],
                responses=error_responses(401, 422, 503))
    async def credit_history(
        caller: CallerDep,
        limit: Annotated[int, Query(ge=1, le=HISTORY_MAX)] = 50,
        cursor: Annotated[str | None, Query(
            pattern=r"^[1-9][0-9]{0,17}$",
            description="The nextCursor of the page before, as it came (opaque); omit for "
                        "the newest rows.",
        )] = None,
    ) -> History:
        """The caller's account ledger, newest first (a team admin's includes pool debits).

        Pages: pass ``nextCursor`` back as ``cursor`` until it is null.
        """
        async with pool.connection() as conn:
            page = await aio.history_page(conn, caller.user_id, limit=limit, cursor=cursor)
        return History(entries=[LedgerRow.of(e) for e in page.entries],
                       next_cursor=page.next_cursor)

    @router.get("/api/billing/overview", response_model=BillingOverview, tags=["billing"],
                responses=error_responses(401, 404, 503))
    async def billing_overview(caller: CallerDep) -> BillingOverview:
        """Remaining credits, team pool, what expires when (next expiry, own and pool; own
        lots expiring within 30 days) and the last 10 usage rows (incl. pool usage); for an
        account without credits yet, ``accountStatus`` and ``accountMessage`` say why."""
        async with pool.connection() as conn:
            overview = await aio.overview(conn, caller.user_id)
        return BillingOverview(credits=CreditsOverview.of(overview))


def _add_admin_routes(router: APIRouter, pool: Pool, auth: AuthDependency) -> None:
    """``/api/admin/backfill-credits`` and ``/api/admin/credits/expire`` (admins only)."""
    AdminDep = Annotated[Caller, Depends(require_admin(auth))]  # noqa: N806

    @router.post("/api/admin/backfill-credits", response_model=BackfillResult, tags=["admin"],
                 responses=error_responses(400, 401, 403, 413, 422, 503))
    async def backfill_credits(
        _admin: AdminDep,
        body: Annotated[BackfillRequest | None, Body()] = None,
    ) -> "BackfillResult":
        """Allocate credits by role to every user who has none (admins only)."""
        request = body or BackfillRequest()
        async with pool.connection() as conn:
            summary = await aio.backfill(conn, dry_run=request.dry_run, limit=request.limit)
        return BackfillResult.of(summary)

    @router.post("/api/admin/credits/expire", response_model=ExpireResult, tags=["admin"],
                 responses=error_responses(400, 401, 403, 413, 422, 503))
    async def expire_credits(
        _admin: AdminDep,
        body: Annotated[ExpireRequest | None, Body()] = None,
    ) -> "ExpireResult":
        """Expire what lapsed lots still hold, one ``expire`` entry per lot (admins only).

        Idempotent; accounts busy right now are skipped (``accountsSkipped``) for the
        next call. With ``limit``, call again until ``lotsExpired`` is 0.
        """
        request = body or ExpireRequest()
        async with pool.connection() as conn:
            summary = await aio.expire(conn, as_of=request.as_of, limit=request.limit)
        return ExpireResult.of(summary)
