"""An HTTP API for credits-db: a FastAPI router, an admin page, and a demo server.

Mount :func:`create_router` in a FastAPI application::

    pool = AsyncConnectionPool(url, kwargs={"autocommit": True}, open=False)
    app.include_router(create_router(pool, auth=my_auth_dependency))

``auth`` is the host application's own authentication: any callable FastAPI can
use with ``Depends`` that returns a :class:`Caller` (or raises ``HTTPException(401)``).
The API never takes a user id for balances or spending: it always acts for the
caller, so a user can never read or spend another user's credits.

Every credits-db exception becomes one HTTP status (:data:`HTTP_STATUS`) and the
body ``{"error": {"code": "<SQLSTATE>", "type": "<ExceptionName>", "message": ...}}``.
See docs/integration.md.

Needs the ``api`` extra: fastapi, uvicorn and psycopg_pool.
"""

import base64
import hashlib
import hmac
import os
import secrets
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qs
from uuid import UUID

import psycopg
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from credits_db import aio, api_html, errors, migrate, urls
from credits_db._calls import Call
from credits_db._execute import arun
from credits_db._queries import parse
from credits_db.models import (
    AllocationReport,
    BackfillSummary,
    Balance,
    CreditOperation,
    LedgerEntry,
    TeamMember,
)

T = TypeVar("T")

API_QUERIES = parse(files("credits_db").joinpath("api_queries.sql").read_text(encoding="utf-8"))
"""The reads the HTTP API adds (``credits_db/api_queries.sql``)."""

TOKEN_COOKIE = "credits_db_token"  # noqa: S105 (a cookie name)
"""The cookie the admin login stores the bearer token in (HttpOnly, SameSite=Strict,
path limited to the admin pages)."""

INT32_MAX = 2**31 - 1
HISTORY_MAX = 500
OVERVIEW_ROWS = 10

# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the host application's auth dependency established it.

    Attributes:
        user_id: the caller's ``users.id``; every balance, spend and team call uses it.
        is_admin: may run operator actions (the backfill, the admin page). This is
            the application's notion of an operator, independent of ``users.role``.
    """

    user_id: UUID
    is_admin: bool


AuthDependency = Callable[..., Caller] | Callable[..., Awaitable[Caller]]
"""A FastAPI dependency returning the :class:`Caller` (raise HTTPException(401) if none)."""


def request_token(request: Request) -> str | None:
    """The bearer token of a request: ``Authorization: Bearer ...``, else the login cookie.

    Use it in your auth dependency so the admin page (which a browser opens with
    the cookie set by ``/admin/login``) and API clients (which send the header)
    both work.
    """
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(TOKEN_COOKIE) or None


def _signature(secret: str, payload: str) -> str:
    digest = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_demo_token(secret: str, user_id: UUID | str, *, is_admin: bool = False) -> str:
    """A demo bearer token ``user:<uuid>.<sig>`` or ``admin:<uuid>.<sig>``.

    ``sig`` is HMAC-SHA256 of the part before the dot with ``secret``. A demo only:
    such tokens never expire and cannot be revoked; use your real authentication.
    """
    if not secret:
        raise ValueError("the token secret must not be empty")
    payload = f"{'admin' if is_admin else 'user'}:{UUID(str(user_id))}"
    return f"{payload}.{_signature(secret, payload)}"


def parse_demo_token(secret: str, token: str) -> Caller | None:
    """The :class:`Caller` a demo token names, or None if it is malformed or badly signed."""
    payload, dot, signature = token.rpartition(".")
    kind, colon, user = payload.partition(":")
    if not dot or not colon or kind not in ("user", "admin"):
        return None
    if not hmac.compare_digest(signature.encode(), _signature(secret, payload).encode()):
        return None
    try:
        user_id = UUID(user)
    except ValueError:
        return None
    return Caller(user_id=user_id, is_admin=kind == "admin")


_bearer = HTTPBearer(auto_error=False, description="A token; see docs/integration.md")


def demo_token_auth(secret: str) -> Callable[..., Caller]:
    """A demo auth dependency accepting :func:`make_demo_token` tokens (header or cookie).

    Missing or invalid tokens are 401. A demo only; see :func:`make_demo_token`.
    """
    if not secret:
        raise ValueError("the token secret must not be empty")

    def authenticate(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        token = request_token(request)
        if token is None:
            raise HTTPException(401, "a bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})
        caller = parse_demo_token(secret, token)
        if caller is None:
            raise HTTPException(401, "the token is invalid",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return caller

    return authenticate


# --------------------------------------------------------------------------- errors

HTTP_STATUS: Mapping[type[errors.CreditsError], int] = {
    errors.InsufficientCredits: 402,
    errors.TeamFull: 409,
    errors.NotTeamAdmin: 403,
    errors.AlreadyInTeam: 409,
    errors.UnknownUser: 404,
    errors.InvalidAmount: 422,
    errors.IdempotencyConflict: 409,
    errors.AlreadyRefunded: 409,
    errors.SelfTeamMembership: 422,
    errors.AppendOnlyViolation: 500,
    errors.InvalidArgument: 422,
    errors.PermissionDenied: 403,
    errors.RetryableError: 503,
    errors.ConnectionLost: 503,
}
"""The HTTP status of every credits-db exception (docs/integration.md has the table)."""

_HTTP_ERRORS: Mapping[int, tuple[str, str]] = {
    401: ("28000", "Unauthorized"),  # invalid_authorization_specification
    403: ("42501", "PermissionDenied"),  # insufficient_privilege
}


def _http_status(exc: errors.CreditsError) -> int:
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def _sqlstate(exc: errors.CreditsError) -> str:
    received: str | None = getattr(exc, "sqlstate_received", None)
    if received:
        return received
    if exc.sqlstate:
        return exc.sqlstate
    return "08006" if isinstance(exc, errors.ConnectionLost) else "40001"


class ErrorDetail(BaseModel):
    """What went wrong: the SQLSTATE, the credits-db exception name and a message."""

    code: str = Field(description="The SQLSTATE (CR001..., 22023, 42501, 28000 ...).")
    type: str = Field(description="The credits_db exception name (InsufficientCredits ...).")
    message: str
    detail: str | None = Field(default=None, description="The database's DETAIL, when it gave one.")
    details: list[dict[str, Any]] | None = Field(
        default=None, description="For request validation: one entry per invalid field.")


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_content(exc: Exception) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body for an exception raised while serving a request.

    Maps credits-db exceptions (and the psycopg errors they translate from) by
    :data:`HTTP_STATUS`, request validation to 422 (code ``22023``, type
    ``InvalidArgument``), ``HTTPException`` 401/403 to ``28000``/``42501``, a
    pool timeout to 503. Anything else is a 500 without internals.
    """
    if isinstance(exc, PoolTimeout):
        return 503, _body("57P03", "PoolTimeout", "no database connection available; retry")
    if isinstance(exc, psycopg.Error):
        translated = errors.translate(exc)
        if isinstance(translated, errors.CreditsError):
            exc = translated
    if isinstance(exc, errors.CreditsError):
        return _http_status(exc), _body(_sqlstate(exc), type(exc).__name__, exc.message,
                                        detail=exc.detail)
    if isinstance(exc, RequestValidationError):
        details = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
             "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        message = "; ".join(
            f"{'.'.join(str(p) for p in d['loc'][1:]) or d['loc'][0]}: {d['msg']}"
            for d in details
        ) if details else "invalid request"
        return 422, _body("22023", "InvalidArgument", message, details=details)
    if isinstance(exc, HTTPException):
        code, name = _HTTP_ERRORS.get(exc.status_code, (f"HTTP{exc.status_code}", "HTTPError"))
        return exc.status_code, _body(code, name, str(exc.detail))
    return 500, _body("XX000", "InternalError", "internal error")


def _body(code: str, name: str, message: str, **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "type": name, "message": message}
    error.update({k: v for k, v in extra.items() if v is not None})
    return {"error": error}


def _error_headers(exc: Exception, status: int) -> dict[str, str]:
    headers = dict(getattr(exc, "headers", None) or {})
    if status == 503:
        headers.setdefault("Retry-After", "1")
    return headers


class ErrorMappingRoute(APIRoute):
    """An ``APIRoute`` that turns exceptions into the JSON error body (:func:`error_content`).

    A router-level alternative to app exception handlers, so the mapping travels
    with the router. Use it for your own routes: ``APIRouter(route_class=ErrorMappingRoute)``.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler: every mapped exception becomes an error response."""
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except (errors.CreditsError, psycopg.Error, RequestValidationError,
                    HTTPException) as exc:
                status, content = error_content(exc)
                return JSONResponse(content, status, headers=_error_headers(exc, status))

        return handle


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        401: "No or an invalid token (28000 Unauthorized).",
        402: "InsufficientCredits (CR001): neither the account nor the team pool can pay.",
        403: "Not allowed: NotTeamAdmin (CR003) or PermissionDenied (42501).",
        404: "UnknownUser (CR005).",
        409: "Conflict: TeamFull (CR002), AlreadyInTeam (CR004), IdempotencyConflict (CR007).",
        422: "InvalidAmount (CR006), InvalidArgument (22023, also request validation), "
             "SelfTeamMembership (CR009).",
        503: "RetryableError, ConnectionLost or no pool connection: retry "
             "(with the same idempotency key).",
    }
    return {s: {"model": ErrorResponse, "description": descriptions[s]} for s in statuses}


# --------------------------------------------------------------------------- JSON models


class CamelModel(BaseModel):
    """A model whose JSON field names are camelCase (Python attributes stay snake_case)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class CreditStatus(CamelModel):
    """The caller's balance (``GET /api/credits/status``)."""

    user_id: UUID
    has_account: bool = Field(description="False until the signup trigger or backfill ran.")
    total_credits: int = Field(description="Own account; 0 without an account.")
    used_credits: int
    remaining_credits: int = Field(description="Own account's remaining credits.")
    team_admin_id: UUID | None = Field(description="The pool the caller is a member of.")
    team_pool_remaining: int | None
    spendable_credits: int = Field(
        description="The largest amount one /use call accepts now (own or pool, never split).")

    @classmethod
    def of(cls, balance: Balance) -> "CreditStatus":
        """From a :class:`credits_db.Balance`."""
        own = balance.own
        return cls(
            user_id=balance.user_id, has_account=own is not None,
            total_credits=own.total_credits if own else 0,
            used_credits=own.used_credits if own else 0,
            remaining_credits=own.remaining_credits if own else 0,
            team_admin_id=balance.team_admin_id, team_pool_remaining=balance.team_pool_remaining,
            spendable_credits=balance.spendable,
        )


class CheckRequest(CamelModel):
    """``POST /api/credits/check``."""

    required_credits: int = Field(ge=1, le=INT32_MAX)


class CheckResponse(CamelModel):
    """Whether one /use call of ``requiredCredits`` would succeed right now."""

    has_enough_credits: bool
    remaining_credits: int = Field(
        description="The spendable amount (own or team pool), the same figure /use checks.")
    required_credits: int


class UseRequest(CamelModel):
    """``POST /api/credits/use``: spend credits for the caller."""

    credits: int = Field(
        ge=-(2**31), le=INT32_MAX, json_schema_extra={"minimum": 1},
        description="Credits to spend, 1 .. 2^31-1 (below 1: 422 InvalidAmount, CR006).")
    source: str = Field(default="usage", max_length=200, description="What they were spent on.")
    description: str | None = Field(default=None, max_length=2000)
    idempotency_key: str | None = Field(
        default=None, max_length=200,
        description="Retry with the same key after a timeout: it is never spent twice.")


class Operation(CamelModel):
    """A debit (or its replay)."""

    log_id: int
    account_user_id: UUID = Field(description="The account debited (the team admin's for "
                                              "a pool debit).")
    actor_user_id: UUID | None
    credits: int
    remaining_credits: int = Field(description="The debited account's remaining credits.")
    from_team_pool: bool
    replayed: bool = Field(description="True: an earlier call with this key is returned; "
                                       "nothing was spent now.")

    @classmethod
    def of(cls, op: CreditOperation) -> "Operation":
        """From a :class:`credits_db.CreditOperation`."""
        return cls(log_id=op.log_id, account_user_id=op.account_user_id,
                   actor_user_id=op.actor_user_id, credits=op.amount,
                   remaining_credits=op.remaining_credits, from_team_pool=op.from_team_pool,
                   replayed=op.replayed)


class TeamMemberOut(CamelModel):
    """One member of the caller's team pool."""

    team_member_id: UUID
    created_at: datetime

    @classmethod
    def of(cls, member: TeamMember) -> "TeamMemberOut":
        """From a :class:`credits_db.TeamMember`."""
        return cls(team_member_id=member.team_member_id, created_at=member.created_at)


class TeamMembers(CamelModel):
    """The caller's team pool."""

    team_admin_id: UUID
    member_limit: int = Field(description="Members the caller's role allows (0: no team).")
    members: list[TeamMemberOut]


class AddTeamMemberRequest(CamelModel):
    """``POST /api/credits/team-members``."""

    team_member_id: UUID


class RemovedResponse(CamelModel):
    """``DELETE /api/credits/team-members/{id}``: whether they were a member."""

    removed: bool


class LedgerRow(CamelModel):
    """One ``credit_usage_log`` row."""

    id: int
    account_user_id: UUID
    actor_user_id: UUID | None = Field(description="Who spent, for a team member's pool debit.")
    amount: int = Field(description="Signed: credits > 0, debits < 0.")
    type: Literal["credit", "debit"] | str
    source: str
    description: str | None
    idempotency_key: str | None
    created_at: datetime

    @classmethod
    def of(cls, entry: LedgerEntry) -> "LedgerRow":
        """From a :class:`credits_db.LedgerEntry`."""
        return cls(id=entry.id, account_user_id=entry.user_id, actor_user_id=entry.actor_user_id,
                   amount=entry.amount, type=entry.type, source=entry.source,
                   description=entry.description, idempotency_key=entry.idempotency_key,
                   created_at=entry.created_at)


class History(CamelModel):
    """The caller's account ledger, newest first."""

    entries: list[LedgerRow]


class CreditsOverview(CamelModel):
    """The credits part of the billing overview."""

    remaining_credits: int = Field(description="Own account.")
    team_pool_remaining: int | None
    spendable_credits: int
    team_admin_id: UUID | None
    recent_usage: list[LedgerRow] = Field(
        description="Last 10 rows: the own account's (for a team admin incl. members' pool "
                    "debits) and the pool debits the caller made as a member.")


class BillingOverview(CamelModel):
    """``GET /api/billing/overview``."""

    credits: CreditsOverview


class RoleAllocationOut(CamelModel):
    """Users allocated and credits given for one role."""

    users: int
    credits: int


class BackfillRequest(CamelModel):
    """Optional body of ``POST /api/admin/backfill-credits``."""

    dry_run: bool = False
    limit: int | None = Field(default=None, ge=1, le=INT32_MAX,
                              description="At most this many users (one batch).")


class BackfillResult(CamelModel):
    """What the backfill did (or, as a dry run, would do)."""

    users_total: int
    users_without_credits: int
    users_backfilled: int
    credits_allocated: int
    fallback_role_users: int
    dry_run: bool
    by_role: dict[str, RoleAllocationOut]

    @classmethod
    def of(cls, summary: BackfillSummary) -> "BackfillResult":
        """From a :class:`credits_db.BackfillSummary`."""
        return cls(
            users_total=summary.users_total, users_without_credits=summary.users_without_credits,
            users_backfilled=summary.users_backfilled,
            credits_allocated=summary.credits_allocated,
            fallback_role_users=summary.fallback_role_users, dry_run=summary.dry_run,
            by_role={role: RoleAllocationOut(users=a.users, credits=a.credits)
                     for role, a in summary.by_role.items()},
        )


# --------------------------------------------------------------------------- router

Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]
"""The pool type :func:`create_router` takes (autocommit connections recommended)."""


def _recent_usage(user_id: UUID, limit: int) -> Call[list[LedgerEntry]]:
    return Call(API_QUERIES["recent_usage"], {"user_id": str(user_id), "limit": limit},
                LedgerEntry.list_from_json)


def _team_member_limit(user_id: UUID) -> Call[int]:
    return Call(API_QUERIES["team_member_limit"], {"user_id": str(user_id)}, int)


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
    ``/api/admin/backfill-credits`` (JSON) and ``/admin/*`` (HTML).
    """
    router = APIRouter(route_class=ErrorMappingRoute)
    CallerDep = Annotated[Caller, Depends(auth)]  # noqa: N806

    def require_admin(caller: CallerDep) -> Caller:
        if not caller.is_admin:
            raise HTTPException(403, "administrators only")
        return caller

    AdminDep = Annotated[Caller, Depends(require_admin)]  # noqa: N806

    @asynccontextmanager
    async def connection() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with pool.connection() as conn:
            # The calls read row[0]: a pool configured with another row factory still works.
            factory = conn.row_factory
            conn.row_factory = tuple_row
            try:
                yield conn
            finally:
                conn.row_factory = factory

    @router.get("/api/credits/status", response_model=CreditStatus, tags=["credits"],
                responses=_error_responses(401, 404, 503))
    async def credit_status(caller: CallerDep) -> "CreditStatus":
        """The caller's own balance, team pool and spendable amount."""
        async with connection() as conn:
            return CreditStatus.of(await aio.balance(conn, caller.user_id))

    @router.post("/api/credits/check", response_model=CheckResponse, tags=["credits"],
                 responses=_error_responses(401, 404, 422, 503))
    async def check_credits(caller: CallerDep, body: CheckRequest) -> CheckResponse:
        """Whether one ``/use`` call of ``requiredCredits`` would succeed now.

        Uses the same ``spendable`` figure the debit checks (own account, else the
        whole amount from the team pool), so check and spend never disagree.
        """
        async with connection() as conn:
            balance = await aio.balance(conn, caller.user_id)
        return CheckResponse(has_enough_credits=balance.spendable >= body.required_credits,
                             remaining_credits=balance.spendable,
                             required_credits=body.required_credits)

    @router.post("/api/credits/use", response_model=Operation, tags=["credits"],
                 responses=_error_responses(401, 402, 404, 409, 422, 503))
    async def use_credits(caller: CallerDep, body: UseRequest) -> "Operation":
        """Spend credits for the caller: own account first, else whole from the team pool."""
        async with connection() as conn:
            op = await aio.debit(conn, caller.user_id, body.credits, source=body.source,
                                 description=body.description,
                                 idempotency_key=body.idempotency_key)
        return Operation.of(op)

    async def team(conn: psycopg.AsyncConnection[Any], caller: Caller) -> TeamMembers:
        members = await aio.list_team_members(conn, caller.user_id)
        return TeamMembers(team_admin_id=caller.user_id,
                           member_limit=await arun(conn, _team_member_limit(caller.user_id)),
                           members=[TeamMemberOut.of(m) for m in members])

    @router.get("/api/credits/team-members", response_model=TeamMembers, tags=["credits"],
                responses=_error_responses(401, 503))
    async def list_team_members(caller: CallerDep) -> TeamMembers:
        """The members of the caller's team pool (the caller is the team admin)."""
        async with connection() as conn:
            return await team(conn, caller)

    @router.post("/api/credits/team-members", response_model=TeamMembers, status_code=201,
                 tags=["credits"], responses=_error_responses(401, 403, 404, 409, 422, 503))
    async def add_team_member(caller: CallerDep, body: AddTeamMemberRequest) -> TeamMembers:
        """Add a user to the caller's pool (a no-op if already there); returns the pool."""
        async with connection() as conn:
            await aio.add_team_member(conn, caller.user_id, body.team_member_id)
            return await team(conn, caller)

    @router.delete("/api/credits/team-members/{team_member_id}", response_model=RemovedResponse,
                   tags=["credits"], responses=_error_responses(401, 422, 503))
    async def remove_team_member(caller: CallerDep, team_member_id: UUID) -> RemovedResponse:
        """Remove a member from the caller's pool; ``removed`` is false if they were not in it."""
        async with connection() as conn:
            removed = await aio.remove_team_member(conn, caller.user_id, team_member_id)
        return RemovedResponse(removed=removed)

    @router.get("/api/credits/history", response_model=History, tags=["credits"],
                responses=_error_responses(401, 422, 503))
    async def credit_history(
        caller: CallerDep,
        limit: Annotated[int, Query(ge=1, le=HISTORY_MAX)] = 50,
    ) -> History:
        """The caller's account ledger, newest first (a team admin's includes pool debits)."""
        async with connection() as conn:
            entries = await aio.history(conn, caller.user_id, limit=limit)
        return History(entries=[LedgerRow.of(e) for e in entries])

    @router.get("/api/billing/overview", response_model=BillingOverview, tags=["billing"],
                responses=_error_responses(401, 404, 503))
    async def billing_overview(caller: CallerDep) -> BillingOverview:
        """Remaining credits, team pool and the last 10 usage rows (incl. pool usage)."""
        async with connection() as conn:
            balance = await aio.balance(conn, caller.user_id)
            recent = await arun(conn, _recent_usage(caller.user_id, OVERVIEW_ROWS))
        return BillingOverview(credits=CreditsOverview(
            remaining_credits=balance.own.remaining_credits if balance.own else 0,
            team_pool_remaining=balance.team_pool_remaining,
            spendable_credits=balance.spendable, team_admin_id=balance.team_admin_id,
            recent_usage=[LedgerRow.of(e) for e in recent],
        ))

    @router.post("/api/admin/backfill-credits", response_model=BackfillResult, tags=["admin"],
                 responses=_error_responses(401, 403, 422, 503))
    async def backfill_credits(
        _admin: AdminDep,
        body: Annotated[BackfillRequest | None, Body()] = None,
    ) -> "BackfillResult":
        """Allocate credits by role to every user who has none (admins only)."""
        request = body or BackfillRequest()
        async with connection() as conn:
            summary = await aio.backfill(conn, dry_run=request.dry_run, limit=request.limit)
        return BackfillResult.of(summary)

    router.include_router(_admin_pages(connection, auth))
    return router


# --------------------------------------------------------------------------- admin page


class _HtmlRoute(APIRoute):
    """Errors of the admin pages as HTML pages (401 shows the sign-in form)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except (errors.CreditsError, psycopg.Error, RequestValidationError,
                    HTTPException) as exc:
                status, content = error_content(exc)
                if status == 401:
                    page = api_html.login_page(_path(request, "credits_admin_login"),
                                               message=content["error"]["message"])
                else:
                    page = api_html.error_page(status, content["error"]["type"],
                                               content["error"]["message"],
                                               _path(request, "credits_admin_login"))
                return HTMLResponse(page, status, headers=_error_headers(exc, status))

        return handle


def _path(request: Request, name: str) -> str:
    return request.url_for(name).path


def _csrf_token(request: Request) -> str:
    token = request_token(request) or ""
    return hashlib.sha256(b"credits-db csrf\0" + token.encode()).hexdigest()


async def _form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded)")
    fields = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items()}


ConnectionFactory = Callable[[], Any]


def _admin_pages(connection: ConnectionFactory, auth: AuthDependency) -> APIRouter:
    router = APIRouter(route_class=_HtmlRoute, include_in_schema=False)

    def require_admin(caller: Annotated[Caller, Depends(auth)]) -> Caller:
        if not caller.is_admin:
            raise HTTPException(403, "this page is for administrators only")
        return caller

    AdminDep = Annotated[Caller, Depends(require_admin)]  # noqa: N806

    def set_token_cookie(request: Request, response: Response, token: str) -> None:
        response.set_cookie(
            TOKEN_COOKIE, token, httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
            path=_path(request, "credits_admin_login").rsplit("/", 1)[0] or "/",
        )

    @router.get("/admin/login", name="credits_admin_login", response_class=HTMLResponse)
    async def login_form(request: Request, token: str | None = None) -> Response:
        """The sign-in form; ``?token=`` signs in directly (convenient, but puts the
        token in the browser history and server logs)."""
        if token:
            response = RedirectResponse(_path(request, "credits_admin_page"), 303)
            set_token_cookie(request, response, token)
            return response
        return HTMLResponse(api_html.login_page(_path(request, "credits_admin_login")))

    @router.post("/admin/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        token = (await _form(request)).get("token", "").strip()
        if not token:
            return HTMLResponse(api_html.login_page(_path(request, "credits_admin_login"),
                                                    message="Enter a token."), 422)
        response = RedirectResponse(_path(request, "credits_admin_page"), 303)
        set_token_cookie(request, response, token)
        return response

    @router.post("/admin/logout", name="credits_admin_logout")
    async def logout(request: Request) -> Response:
        response = RedirectResponse(_path(request, "credits_admin_login"), 303)
        response.delete_cookie(
            TOKEN_COOKIE, path=_path(request, "credits_admin_login").rsplit("/", 1)[0] or "/")
        return response

    def links(request: Request) -> api_html.Links:
        return api_html.Links(page=_path(request, "credits_admin_page"),
                              backfill=_path(request, "credits_admin_backfill"),
                              logout=_path(request, "credits_admin_logout"))

    async def report() -> AllocationReport:
        async with connection() as conn:
            result: AllocationReport = await aio.allocation_report(conn)
            return result

    @router.get("/admin/credits", name="credits_admin_page", response_class=HTMLResponse)
    async def admin_page(request: Request, _admin: AdminDep) -> HTMLResponse:
        """Users without credits, credits by role, and the Backfill Credits button."""
        return HTMLResponse(api_html.admin_page(links(request), await report()))

    @router.get("/admin/credits/backfill", name="credits_admin_backfill",
                response_class=HTMLResponse)
    async def confirm_backfill(request: Request, _admin: AdminDep) -> HTMLResponse:
        """The confirmation step: what the backfill would do (a dry run), Confirm or Cancel."""
        async with connection() as conn:
            preview: BackfillSummary = await aio.backfill(conn, dry_run=True)
        return HTMLResponse(api_html.confirm_page(links(request), preview, _csrf_token(request)))

    @router.post("/admin/credits/backfill", response_class=HTMLResponse)
    async def run_backfill(request: Request, _admin: AdminDep) -> HTMLResponse:
        """Run the backfill (needs the form's CSRF token) and show its summary."""
        form = await _form(request)
        if not hmac.compare_digest(form.get("csrf", ""), _csrf_token(request)):
            raise HTTPException(403, "the form has expired or did not come from this page; "
                                     "open the admin page and try again")
        async with connection() as conn:
            summary: BackfillSummary = await aio.backfill(conn)
        return HTMLResponse(api_html.admin_page(links(request), await report(), summary))

    return router


# --------------------------------------------------------------------------- app and server


def create_app(url: str, auth: AuthDependency, *, min_size: int = 1, max_size: int = 10,
               title: str = "credits-db") -> FastAPI:
    """A FastAPI app serving :func:`create_router` on the database at ``url``.

    The pool (autocommit connections) opens at startup and closes at shutdown.
    """
    pool: Pool = AsyncConnectionPool(
        urls.to_libpq(url), min_size=min_size, max_size=max_size,
        kwargs={"autocommit": True}, open=False, name="credits-db-api",
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=30)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title=title, lifespan=lifespan,
                  description="credits-db HTTP API. Errors: {\"error\": {code, type, message}}.")
    app.include_router(create_router(pool, auth))

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse("/docs")

    return app


DEMO_ROLES_WAITING: tuple[str | None, ...] = ("member", "team_admin", "RecruitPro", None)
"""Roles of the demo users created before installing (they wait for the backfill)."""

DEMO_ROLES: tuple[str, ...] = ("member", "admin", "team_admin", "RecruitPro", "super_admin")
"""Roles of the demo users who sign up after installing (one per role, with tokens)."""


def seed_demo(url: str, secret: str) -> dict[str, str]:
    """Install credits-db into an empty database with demo users; return tokens by name.

    Users of :data:`DEMO_ROLES_WAITING` exist before the install (so the backfill
    has work); one user per :data:`DEMO_ROLES` signs up after it, and the ``member``
    joins the ``team_admin``'s pool. The ``super_admin`` user's token is an admin
    token (``"admin"``); the others are user tokens named by role.
    """
    from credits_db import functions

    demo = parse(files("credits_db").joinpath("demo.sql").read_text(encoding="utf-8"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(demo["create_host_users"])
        conn.execute(demo["add_users"], {"roles": list(DEMO_ROLES_WAITING), "prefix": "waiting"})
        migrate.upgrade(url)
        rows = conn.execute(
            "INSERT INTO users (email, role)"
            " SELECT format('%%s@example.com', lower(r)), r FROM unnest(%(roles)s::text[]) AS r"
            " RETURNING role, id",
            {"roles": list(DEMO_ROLES)},
        ).fetchall()
        ids = {str(role): UUID(str(user_id)) for role, user_id in rows}
        functions.add_team_member(conn, ids["team_admin"], ids["member"])
    tokens = {role: make_demo_token(secret, user_id) for role, user_id in ids.items()}
    tokens["admin"] = make_demo_token(secret, ids["super_admin"], is_admin=True)
    return tokens


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Make SIGTERM raise SystemExit, so the embedded server is stopped and deleted.

    uvicorn shuts down on SIGTERM and then raises the signal again; with the default
    handler that would kill the process before the embedded server's cleanup runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(url: str | None = None, host: str = "127.0.0.1", port: int = 8000, *,
          secret: str | None = None) -> None:
    """Run the HTTP API and admin page with uvicorn (the ``credits-db serve`` command).

    With ``url`` (or ``DATABASE_URL``): serve that database as it is (nothing is
    migrated or seeded); tokens are :func:`make_demo_token` tokens signed with
    ``secret`` or ``$CREDITS_DB_API_SECRET``, which must then be set. Without: start
    an embedded PostgreSQL, install credits-db, seed demo users (:func:`seed_demo`),
    print their bearer tokens, and serve until interrupted (the data is then deleted).

    Raises:
        ValueError: a URL is given but no secret.
    """
    import uvicorn

    secret = secret or os.environ.get("CREDITS_DB_API_SECRET") or None
    url = url or urls.from_environment()
    if url is not None:
        if secret is None:
            raise ValueError("set CREDITS_DB_API_SECRET (the HMAC secret of the demo tokens)")
        uvicorn.run(create_app(url, demo_token_auth(secret)), host=host, port=port)
        return

    from credits_db.embedded import embedded_server

    secret = secret or secrets.token_urlsafe(32)
    print("starting an embedded PostgreSQL server (demo data, deleted on exit)",
          file=sys.stderr, flush=True)
    with _sigterm_exits(), embedded_server() as server_url:
        tokens = seed_demo(server_url, secret)
        base = f"http://{host}:{port}"
        print("demo bearer tokens (Authorization: Bearer <token>):")
        for name, token in tokens.items():
            print(f"  {name:12} {token}")
        print(f"admin page: {base}/admin/login  (paste the 'admin' token)")
        print(f"API docs:   {base}/docs")
        print(f"try: curl -H 'Authorization: Bearer {tokens['member']}' "
              f"{base}/api/credits/status", flush=True)
        uvicorn.run(create_app(server_url, demo_token_auth(secret)), host=host, port=port)
