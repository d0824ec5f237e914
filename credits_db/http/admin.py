"""The admin pages: sign-in, users without credits and credits by role, and the
Backfill Credits button with its confirmation step (server-rendered HTML, no JavaScript).

The bearer token is kept in the :data:`~credits_db.http.auth.TOKEN_COOKIE` cookie;
the backfill form carries a CSRF token derived from it.
"""

import hashlib
import hmac
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from credits_db import aio
from credits_db.http import templates
from credits_db.http._queries import Pool
from credits_db.http.auth import (
    TOKEN_COOKIE,
    AuthDependency,
    Caller,
    request_token,
    require_admin,
)
from credits_db.http.errors import ErrorMappingRoute
from credits_db.models import AllocationReport


class _HtmlRoute(ErrorMappingRoute):
    """Errors of the admin pages as HTML pages (401 shows the sign-in form)."""

    def render_error(self, request: Request, status: int, content: dict[str, Any],
                     headers: dict[str, str]) -> Response:
        """The error as a page: the sign-in form for a 401, else an error page."""
        error = content["error"]
        login = _path(request, "credits_admin_login")
        if status == 401:
            page = templates.login_page(login, message=error["message"])
        else:
            page = templates.error_page(status, error["type"], error["message"], login)
        return HTMLResponse(page, status, headers=headers)


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


def admin_router(pool: Pool, auth: AuthDependency) -> APIRouter:
    """The admin pages (``/admin/*``, not in the OpenAPI schema); admins only but the login."""
    router = APIRouter(route_class=_HtmlRoute, include_in_schema=False)
    _add_sign_in_routes(router)
    _add_page_routes(router, pool, auth)
    return router


def _cookie_path(request: Request) -> str:
    """The admin pages' folder (``/admin``): the token cookie goes nowhere else."""
    return _path(request, "credits_admin_login").rsplit("/", 1)[0] or "/"


def _signed_in(request: Request, token: str) -> Response:
    """A redirect to the admin page that stores ``token`` in the cookie."""
    response = RedirectResponse(_path(request, "credits_admin_page"), 303)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path=_cookie_path(request))
    return response


def _add_sign_in_routes(router: APIRouter) -> None:
    """``/admin/login`` (the form, and posting it) and ``/admin/logout``."""

    @router.get("/admin/login", name="credits_admin_login", response_class=HTMLResponse)
    async def login_form(request: Request, token: str | None = None) -> Response:
        """The sign-in form; ``?token=`` signs in directly (convenient, but puts the
        token in the browser history and server logs)."""
        if token:
            return _signed_in(request, token)
        return HTMLResponse(templates.login_page(_path(request, "credits_admin_login")))

    @router.post("/admin/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        token = (await _form(request)).get("token", "").strip()
        if not token:
            return HTMLResponse(templates.login_page(_path(request, "credits_admin_login"),
                                                     message="Enter a token."), 422)
        return _signed_in(request, token)

    @router.post("/admin/logout", name="credits_admin_logout")
    async def logout(request: Request) -> Response:
        response = RedirectResponse(_path(request, "credits_admin_login"), 303)
        response.delete_cookie(TOKEN_COOKIE, path=_cookie_path(request))
        return response


def _links(request: Request) -> templates.Links:
    return templates.Links(page=_path(request, "credits_admin_page"),
                           backfill=_path(request, "credits_admin_backfill"),
                           logout=_path(request, "credits_admin_logout"))


def _add_page_routes(router: APIRouter, pool: Pool, auth: AuthDependency) -> None:
    """``/admin/credits`` and its backfill (the confirmation step, then the run)."""
    AdminDep = Annotated[Caller, Depends(require_admin(auth))]  # noqa: N806

    async def report() -> AllocationReport:
        async with pool.connection() as conn:
            return await aio.allocation_report(conn)

    @router.get("/admin/credits", name="credits_admin_page", response_class=HTMLResponse)
    async def admin_page(request: Request, _admin: AdminDep) -> HTMLResponse:
        """Users without credits, credits by role, and the Backfill Credits button."""
        return HTMLResponse(templates.admin_page(_links(request), await report()))

    @router.get("/admin/credits/backfill", name="credits_admin_backfill",
                response_class=HTMLResponse)
    async def confirm_backfill(request: Request, _admin: AdminDep) -> HTMLResponse:
        """The confirmation step: what the backfill would do (a dry run), Confirm or Cancel."""
        async with pool.connection() as conn:
            preview = await aio.backfill(conn, dry_run=True)
        return HTMLResponse(templates.confirm_page(_links(request), preview, _csrf_token(request)))

    @router.post("/admin/credits/backfill", response_class=HTMLResponse)
    async def run_backfill(request: Request, _admin: AdminDep) -> HTMLResponse:
        """Run the backfill (needs the form's CSRF token) and show its summary.

        Batched (``backfill_all``): one committed transaction per batch of users,
        so a large table never holds one long transaction.
        """
        form = await _form(request)
        if not hmac.compare_digest(form.get("csrf", ""), _csrf_token(request)):
            raise HTTPException(403, "the form has expired or did not come from this page; "
                                     "open the admin page and try again")
        async with pool.connection() as conn:
            summary = await aio.backfill_all(conn)
        return HTMLResponse(templates.admin_page(_links(request), await report(), summary))
