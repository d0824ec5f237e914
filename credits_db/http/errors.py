"""How an exception raised while serving a request becomes an HTTP error response.

Every credits-db exception has one HTTP status (:data:`HTTP_STATUS`) and the body
``{"error": {"code": "<SQLSTATE>", "type": "<ExceptionName>", "message": ...}}``
(:func:`error_content`); :class:`ErrorMappingRoute` applies the mapping to a router,
:func:`add_error_handlers` to what an app answers outside it (404, 405, OPTIONS).
"""

import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.routing import Match

from credits_db import errors
from credits_db.http.schemas import NO_NUL, ErrorResponse

logger = logging.getLogger("credits_db.http")
"""Where an unexpected error (a 500) is logged, with its traceback."""

API_FIELDS: Mapping[str, str] = {
    "amount": "credits",
    "source": "source",
    "description": "description",
    "idempotency_key": "idempotencyKey",
    "dry_run": "dryRun",
    "limit": "limit",
    "as_of": "asOf",
    "expires_at": "expiresAt",
    "priority": "priority",
    "team_member_id": "teamMemberId",
    "team_admin_id": "the caller",
    "user_id": "the caller",
}
"""The API's name for each argument of the SQL functions and the Python API."""

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
    errors.ReadCommittedRequired: 500,
    errors.InvalidArgument: 422,
    errors.PermissionDenied: 403,
    errors.NotInstalled: 500,
    errors.RetryableError: 503,
    errors.ConnectionLost: 503,
}
"""The HTTP status of every credits-db exception (docs/integration.md has the table)."""

_HTTP_ERRORS: Mapping[int, tuple[str, str]] = {
    400: ("22P02", "InvalidArgument"),  # invalid_text_representation: the body is no JSON
    401: ("28000", "Unauthorized"),  # invalid_authorization_specification
    403: ("42501", "PermissionDenied"),  # insufficient_privilege
    404: ("42704", "NotFound"),  # undefined_object
    405: ("42601", "MethodNotAllowed"),
    413: ("54000", "PayloadTooLarge"),  # program_limit_exceeded
    415: ("0A000", "UnsupportedMediaType"),  # feature_not_supported
}

_SQL_PARAMETER = re.compile(r"\bp_([a-z_]+)\b")


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
    :data:`HTTP_STATUS`; request validation to 422 (code ``22023``, type
    ``InvalidArgument``), a body that is not JSON to 400 (``22P02``);
    ``HTTPException`` 401/403 to ``28000``/``42501`` (400, 404, 405, 413, 415
    alike); a pool timeout to 503. Messages name the API's fields
    (``idempotencyKey``), never a SQL parameter (``p_idempotency_key``). Anything
    else is a 500 without internals (:class:`ErrorMappingRoute` logs it).
    """
    if isinstance(exc, PoolTimeout):
        return 503, _body("57P03", "PoolTimeout", "no database connection available; retry")
    if isinstance(exc, psycopg.Error):
        translated = errors.translate(exc)
        if isinstance(translated, errors.CreditsError):
            exc = translated
    if isinstance(exc, errors.CreditsError):
        return _http_status(exc), _body(_sqlstate(exc), type(exc).__name__,
                                        api_message(exc.message), detail=exc.detail,
                                        field=_api_field(exc))
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc)
    if isinstance(exc, HTTPException):
        code, name = _HTTP_ERRORS.get(exc.status_code, (f"HTTP{exc.status_code}", "HTTPError"))
        return exc.status_code, _body(code, name, _http_message(exc))
    return 500, _body("XX000", "InternalError", "internal error")


def api_message(message: str) -> str:
    """``message`` with each SQL parameter (``p_source``) named as the API names it."""
    return _SQL_PARAMETER.sub(lambda m: API_FIELDS.get(m.group(1), m.group(1)), message)


def _api_field(exc: errors.CreditsError) -> str | None:
    field: str | None = getattr(exc, "field", None)
    return None if field is None else API_FIELDS.get(field, field)


def _http_message(exc: HTTPException) -> str:
    if exc.status_code == 400:
        # FastAPI's "There was an error parsing the body": invalid UTF-8, nesting
        # too deep for the parser...
        return "the request body is not valid JSON: it must be UTF-8, and not nested too deep"
    return str(exc.detail)


def _validation_error(exc: RequestValidationError) -> tuple[int, dict[str, Any]]:
    """422 for a request that breaks the schema; 400 for a body that is not JSON at all."""
    details = [
        {"loc": list(e.get("loc", ())), "msg": _validation_message(e),
         "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    if any(d["type"] == "json_invalid" for d in details):
        return 400, _body("22P02", "InvalidArgument", str(details[0]["msg"]), details=details)
    message = "; ".join(
        f"{'.'.join(str(p) for p in d['loc'][1:]) or d['loc'][0]}: {d['msg']}"
        for d in details
    ) if details else "invalid request"
    return 422, _body("22023", "InvalidArgument", message, details=details)


def _validation_message(error: Mapping[str, Any]) -> str:
    """pydantic's message, except where a plainer one says what to send."""
    kind, ctx = error.get("type"), error.get("ctx") or {}
    if kind == "json_invalid":
        position = error.get("loc", ("body", "?"))[-1]
        return (f"the request body is not valid JSON ({ctx.get('error', 'decode error')} "
                f"at character {position})")
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NO_NUL:
        return "must not contain a NUL character (\\u0000)"
    return str(error.get("msg", ""))


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
    renders the same error otherwise (the admin pages: an HTML page). An exception
    with no mapping is logged with its traceback (:data:`logger`) and answered 500.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler: every exception becomes an error response."""
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                status, content = error_content(exc)
                if status >= 500 and status != 503:
                    logger.exception("%s %s failed", request.method, request.url.path)
                return self.render_error(request, status, content, _error_headers(exc, status))

        return handle

    def render_error(self, request: Request, status: int, content: dict[str, Any],
                     headers: dict[str, str]) -> Response:
        """The response for an error: ``content`` (an :class:`ErrorResponse` body) as JSON."""
        return JSONResponse(content, status, headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers at the request's path (``OPTIONS`` too).

    Each method is tried against the app's routes as the router would match it, so
    routes of included routers count (FastAPI no longer copies them into the app).
    """
    routes = request.app.router.routes
    methods = {"OPTIONS"}
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in routes):
            methods.add(method)
    return sorted(methods)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allow = ", ".join(allowed_methods(request))
        if request.method == "OPTIONS":
            # No route takes OPTIONS itself: answer it with what the path allows.
            return Response(status_code=204, headers={"Allow": allow})
        headers["Allow"] = allow
    status, content = error_content(exc)
    return JSONResponse(content, status, headers=headers)


async def _validation_exception(_request: Request, exc: Exception) -> Response:
    status, content = error_content(exc)
    return JSONResponse(content, status)


def add_error_handlers(app: FastAPI) -> None:
    """Answer what no route of ``app`` handles in the error body too.

    An unknown path (404), a method the path does not take (405, with an ``Allow``
    header listing every method the path takes), and request validation outside
    an :class:`ErrorMappingRoute`. ``OPTIONS`` on a known path answers 204 with
    ``Allow``. :func:`~credits_db.http.create_app` calls it; call it on your own app.
    """
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_exception)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that can fail with ``statuses``."""
    descriptions = {
        401: "No or an invalid token (28000 Unauthorized).",
        402: "InsufficientCredits (CR001): neither the account nor the team pool can pay.",
        403: "Not allowed: NotTeamAdmin (CR003) or PermissionDenied (42501).",
        404: "UnknownUser (CR005).",
        409: "Conflict: TeamFull (CR002), AlreadyInTeam (CR004), IdempotencyConflict (CR007).",
        400: "InvalidArgument (22P02): the body is not valid JSON.",
        422: "InvalidAmount (CR006), InvalidArgument (22023, also request validation), "
             "SelfTeamMembership (CR009).",
        413: "PayloadTooLarge (54000): the body is larger than the server accepts.",
        503: "RetryableError, ConnectionLost or no pool connection: retry "
             "(with the same idempotency key).",
    }
    return {s: {"model": ErrorResponse, "description": descriptions[s]} for s in statuses}
