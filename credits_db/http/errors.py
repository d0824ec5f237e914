"""How an exception raised while serving a request becomes an HTTP error response.

Every credits-db exception has one HTTP status (:data:`HTTP_STATUS`) and the body
``{"error": {"code": "<SQLSTATE>", "type": "<ExceptionName>", "message": ...}}``
(:func:`error_content`); :class:`ErrorMappingRoute` applies the mapping to a router.
"""

from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import psycopg
from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from psycopg_pool import PoolTimeout

from credits_db import errors
from credits_db.http.schemas import ErrorResponse

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
    """An ``APIRoute`` that turns exceptions into error responses (:func:`error_content`).

    A router-level alternative to app exception handlers, so the mapping travels
    with the router. Use it for your own routes: ``APIRouter(route_class=ErrorMappingRoute)``.
    The response is the JSON error body; a subclass overriding :meth:`render_error`
    renders the same error otherwise (the admin pages: an HTML page).
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
                return self.render_error(request, status, content, _error_headers(exc, status))

        return handle

    def render_error(self, request: Request, status: int, content: dict[str, Any],
                     headers: dict[str, str]) -> Response:
        """The response for an error: ``content`` (an :class:`ErrorResponse` body) as JSON."""
        return JSONResponse(content, status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that can fail with ``statuses``."""
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
