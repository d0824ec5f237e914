"""The admin pages: sign-in, the overview with its charts, expiring credits and
renewals, the backfill as a job with progress, and a user lookup (server-rendered
HTML, no JavaScript).

Security, on every ``/admin`` response: :data:`SECURITY_HEADERS` (no framing, no
sniffing, no caching, no referrer; CSP ``default-src 'self'``). Every POST is
refused when the browser says it comes from another site (:func:`_same_origin`) and
carries a CSRF token: the sign-in form the one bound to the pre-session cookie
:data:`~credits_db.http.auth.LOGIN_COOKIE`, the other forms the one derived from the
session token (:data:`~credits_db.http.auth.TOKEN_COOKIE`). A link never signs a
browser in (``GET /admin/login?token=`` only shows the form).
"""

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from credits_db import aio
from credits_db._execute import arun
from credits_db.http import _admin_queries, templates
from credits_db.http._admin_queries import UserRecord
from credits_db.http._queries import Pool
from credits_db.http.auth import (
    LOGIN_COOKIE,
    TOKEN_COOKIE,
    AuthDependency,
    Caller,
    request_token,
    require_admin,
)
from credits_db.http.backfill_jobs import BackfillJob, BackfillJobs
from credits_db.http.errors import ErrorMappingRoute
from credits_db.models import Overview

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
"""Sent with every admin response, errors included."""

BACKFILL_BATCH_SIZE = 5_000
"""Users per committed batch of the page's backfill: a fraction of a second each."""

LOOKUP_ENTRIES = 10
POOLS_SHOWN = 10
_NONCE = re.compile(r"[A-Za-z0-9_-]{43}\Z")


class _HtmlRoute(ErrorMappingRoute):
    """Admin routes: errors as HTML pages (401 shows the sign-in form), and the
    :data:`SECURITY_HEADERS` on every response."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The mapped handler (errors become pages), plus the security headers."""
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            response = await handler(request)
            response.headers.update(SECURITY_HEADERS)
            return response

        return handle

    def render_error(self, request: Request, status: int, content: dict[str, Any],
                     headers: dict[str, str]) -> Response:
        """The error as a page: the sign-in form for a 401, else an error page."""
        error = content["error"]
        if status == 401:
            return _login_form(request, status, message=error["message"], headers=headers)
        page = templates.error_page(_links(request), status, error["type"], error["message"])
        return HTMLResponse(page, status, headers=headers)


def _path(request: Request, name: str, **params: str) -> str:
    return request.url_for(name, **params).path


def _links(request: Request) -> templates.Links:
    return templates.Links(page=_path(request, "credits_admin_page"),
                           backfill=_path(request, "credits_admin_backfill"),
                           logout=_path(request, "credits_admin_logout"),
                           login=_path(request, "credits_admin_login"),
                           lookup=_path(request, "credits_admin_lookup"),
                           stylesheet=_path(request, "credits_admin_stylesheet"))


def _cookie_path(request: Request) -> str:
    """The admin pages' folder (``/admin``): the cookies go nowhere else."""
    return _path(request, "credits_admin_login").rsplit("/", 1)[0] or "/"


def _csrf_token(request: Request) -> str:
    """The forms' CSRF token: derived from the session token, which only this browser has."""
    token = request_token(request) or ""
    return hashlib.sha256(b"credits-db csrf\0" + token.encode()).hexdigest()


def _same_origin(request: Request) -> None:
    """Refuse a POST the browser says is cross-site (as Go's CrossOriginProtection does).

    ``Sec-Fetch-Site`` decides when sent (every current browser does): only
    ``same-origin`` or ``none`` (typed by the user) pass. Else an ``Origin`` header
    must name this host. A request with neither is not from a browser that could be
    tricked, and passes to the CSRF token check.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise HTTPException(403, "cross-site form posts are refused")
        return
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "cross-site form posts are refused")


async def _form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded)")
    fields = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items()}


async def _checked_form(request: Request) -> dict[str, str]:
    """A same-origin form post carrying the session's CSRF token, else 403."""
    _same_origin(request)
    form = await _form(request)
    if not hmac.compare_digest(form.get("csrf", ""), _csrf_token(request)):
        raise HTTPException(403, "the form has expired or did not come from this page; "
                                 "open the admin page and try again")
    return form


def admin_router(pool: Pool, auth: AuthDependency, *,
                 backfill_batch_size: int = BACKFILL_BATCH_SIZE) -> APIRouter:
    """The admin pages (``/admin/*``, not in the OpenAPI schema); admins only but the login.

    The router keeps its backfill jobs (:class:`BackfillJobs`) in memory: one at a
    time, per router, in this process.
    """
    router = APIRouter(route_class=_HtmlRoute, include_in_schema=False)
    _add_sign_in_routes(router)
    _add_page_routes(router, pool, auth)
    _add_backfill_routes(router, pool, auth, BackfillJobs(pool, batch_size=backfill_batch_size))
    return router


def _cookie(response: Response, request: Request, name: str, value: str) -> None:
    response.set_cookie(name, value, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path=_cookie_path(request))


def _login_form(request: Request, status: int = 200, *, message: str | None = None,
                notice: str | None = None, headers: dict[str, str] | None = None
                ) -> HTMLResponse:
    """The sign-in form, with the pre-session cookie its CSRF token must match."""
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not _NONCE.match(nonce):
        nonce = secrets.token_urlsafe(32)
    page = templates.login_page(_links(request), nonce, message=message, notice=notice)
    response = HTMLResponse(page, status, headers=headers)
    _cookie(response, request, LOGIN_COOKIE, nonce)
    return response


def _add_sign_in_routes(router: APIRouter) -> None:
    """The stylesheet, ``/admin/login`` (the form, and posting it) and ``/admin/logout``."""

    @router.get("/admin/static/admin.css", name="credits_admin_stylesheet")
    async def stylesheet() -> Response:
        return Response(templates.STYLESHEET, media_type="text/css")

    @router.get("/admin/login", name="credits_admin_login", response_class=HTMLResponse)
    async def login_form(request: Request, token: str | None = None) -> Response:
        """The sign-in form. A ``?token=`` is ignored: a link must not sign a browser in
        (login CSRF), and a token in a URL lands in histories and logs."""
        notice = ("Sign-in links are not accepted: paste the token below."
                  if token is not None else None)
        return _login_form(request, notice=notice)

    @router.post("/admin/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        """Sign in: a same-origin post with the pre-session token stores the token."""
        _same_origin(request)
        form = await _form(request)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not _NONCE.match(nonce) or not hmac.compare_digest(form.get("csrf", ""), nonce):
            return _login_form(request, 403, message="The sign-in form expired or did not "
                                                     "come from this site; try again.")
        token = form.get("token", "").strip()
        if not token:
            return _login_form(request, 422, message="Enter a token.")
        response = RedirectResponse(_path(request, "credits_admin_page"), 303)
        _cookie(response, request, TOKEN_COOKIE, token)
        response.delete_cookie(LOGIN_COOKIE, path=_cookie_path(request))
        return response

    @router.post("/admin/logout", name="credits_admin_logout")
    async def logout(request: Request) -> Response:
        """Sign out (a same-origin post with the session's CSRF token)."""
        await _checked_form(request)
        response = RedirectResponse(_path(request, "credits_admin_login"), 303)
        response.delete_cookie(TOKEN_COOKIE, path=_cookie_path(request))
        return response


async def _explain(conn: psycopg.AsyncConnection[Any], who: str
                   ) -> tuple[UserRecord | None, Overview | None]:
    """The user ``who`` names (a uuid, else an email) and what the overview endpoint
    answers for them (``credits_db.aio.overview``: status, failure, last rows).

    Raises:
        HTTPException: 422 for an email when ``users`` has no email column.
    """
    try:
        user_id: UUID | None = UUID(who)
    except ValueError:
        try:
            user_id = await arun(conn, _admin_queries.user_id_by_email(who))
        except psycopg.errors.UndefinedColumn:
            raise HTTPException(422, "this users table has no email column: look up by id "
                                     "(a uuid)") from None
    if user_id is None:
        return None, None
    record = await arun(conn, _admin_queries.user_lookup(user_id))
    if record is None:
        return None, None
    return record, await aio.overview(conn, user_id)


def _add_page_routes(router: APIRouter, pool: Pool, auth: AuthDependency) -> None:
    """``/admin/credits/users``: the user lookup."""
    AdminDep = Annotated[Caller, Depends(require_admin(auth))]  # noqa: N806

    @router.get("/admin/credits/users", name="credits_admin_lookup",
                response_class=HTMLResponse)
    async def lookup(request: Request, _admin: AdminDep, who: str = "") -> HTMLResponse:
        """Look a user up by id or email: role, allocation, balance, pool, last rows."""
        who = who.strip()
        links, csrf = _links(request), _csrf_token(request)
        if not who:
            return HTMLResponse(templates.lookup_page(links, csrf, who, None, None))
        async with pool.connection() as conn:
            user, overview = await _explain(conn, who)
        if user is None or overview is None:
            return HTMLResponse(templates.lookup_page(
                links, csrf, who, None, None, message=f"No user has the id or email {who!r}."),
                404)
        return HTMLResponse(templates.lookup_page(links, csrf, who, user, overview))


def _job_link(request: Request, job: BackfillJob | None) -> templates.JobLink | None:
    if job is None:
        return None
    return templates.JobLink(job, _path(request, "credits_admin_backfill_job", job_id=job.id))


def _add_backfill_routes(router: APIRouter, pool: Pool, auth: AuthDependency,
                         jobs: BackfillJobs) -> None:
    """``/admin/credits`` and its backfill: the confirmation step, the job and its page."""
    AdminDep = Annotated[Caller, Depends(require_admin(auth))]  # noqa: N806

    async def overview(request: Request) -> templates.Overview:
        async with pool.connection() as conn:
            return templates.Overview(
                report=await aio.allocation_report(conn),
                daily=await arun(conn, _admin_queries.daily_ledger(templates.CHART_DAYS)),
                pools=await arun(conn, _admin_queries.fullest_pools(POOLS_SHOWN)),
                problems=await aio.verify(conn),
                backfills=await arun(conn, _admin_queries.last_backfill()),
                expiring=await arun(conn, _admin_queries.expiring_lots(
                    templates.EXPIRY_DAYS, templates.SOONEST_SHOWN)),
                renewals=await arun(conn, _admin_queries.renewals(
                    templates.RENEWAL_DAYS, templates.SOONEST_SHOWN)),
                running=_job_link(request, jobs.running),
                last_job=_job_link(request, jobs.latest_finished))

    @router.get("/admin/credits", name="credits_admin_page", response_class=HTMLResponse)
    async def admin_page(request: Request, _admin: AdminDep) -> HTMLResponse:
        """Users without credits, the backfill, integrity, expiring credits, renewals,
        the lookup and the charts."""
        return HTMLResponse(templates.admin_page(_links(request), _csrf_token(request),
                                                 await overview(request)))

    @router.get("/admin/credits/backfill", name="credits_admin_backfill",
                response_class=HTMLResponse)
    async def confirm_backfill(request: Request, _admin: AdminDep) -> HTMLResponse:
        """The confirmation step: what the backfill would do (a dry run), Confirm or Cancel."""
        async with pool.connection() as conn:
            preview = await aio.backfill(conn, dry_run=True)
        return HTMLResponse(templates.confirm_page(_links(request), _csrf_token(request),
                                                   preview, _job_link(request, jobs.running)))

    @router.post("/admin/credits/backfill", response_class=HTMLResponse)
    async def run_backfill(request: Request, _admin: AdminDep) -> Response:
        """Start the backfill job (or find the running one) and redirect to its page.

        The 303 makes the browser GET the job's page, so a reload never posts again.
        """
        await _checked_form(request)
        job, _started = jobs.start()
        return RedirectResponse(_path(request, "credits_admin_backfill_job", job_id=job.id), 303)

    @router.get("/admin/credits/backfill/jobs/{job_id}", name="credits_admin_backfill_job",
                response_class=HTMLResponse)
    async def backfill_job(request: Request, _admin: AdminDep, job_id: str) -> HTMLResponse:
        """A job's progress (the page refreshes itself while it runs), then its summary."""
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such backfill job in this server process (job "
                                     "state is kept in memory; a restart forgets it). The "
                                     "ledger is the truth: open the admin page, and run the "
                                     "backfill again if users still wait.")
        return HTMLResponse(templates.job_page(_links(request), _csrf_token(request), job))
