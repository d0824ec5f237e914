"""A ready-made app and server: :func:`create_app` (the router on a pool of its own)
and :func:`serve` (the ``credits-db serve`` command, with an embedded demo database).
"""

import os
import secrets
import shlex
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from psycopg_pool import AsyncConnectionPool

from credits_db import demo, urls
from credits_db.http._queries import Pool
from credits_db.http.auth import AuthDependency, demo_token_auth, make_demo_token
from credits_db.http.errors import add_error_handlers
from credits_db.http.limits import DEFAULT_MAX_BODY_SIZE, BodySizeLimit
from credits_db.http.routes import create_router


def create_app(url: str, auth: AuthDependency, *, min_size: int = 1, max_size: int = 10,
               title: str = "credits-db",
               max_body_size: int = DEFAULT_MAX_BODY_SIZE) -> FastAPI:
    """A FastAPI app serving :func:`create_router` on the database at ``url``.

    The pool (autocommit connections) opens at startup and closes at shutdown.
    Request bodies over ``max_body_size`` bytes are answered 413 before anything
    reads them (:class:`~credits_db.http.limits.BodySizeLimit`). 404, 405 and
    ``OPTIONS`` answer in the error body (:func:`add_error_handlers`). ``/docs``
    is Swagger UI served from the app itself (no CDN: it works offline).
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

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="credits-db HTTP API. Errors: {\"error\": {code, type, message}}.")
    app.add_middleware(BodySizeLimit, max_size=max_body_size)
    add_error_handlers(app)
    app.include_router(create_router(pool, auth))
    add_offline_docs(app)

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse("/docs")

    return app


def add_offline_docs(app: FastAPI, path: str = "/docs") -> None:
    """Serve Swagger UI at ``path`` with its script and style from this app, not a CDN.

    The files come from the ``swagger-ui-bundle`` package (the ``api`` extra), so
    the page works with no network. They are served under ``{path}/assets``. Give
    the app ``docs_url=None`` so FastAPI's own (CDN) page does not take the path first.
    """
    from swagger_ui_bundle import swagger_ui_path

    assets = f"{path}/assets"
    app.mount(assets, StaticFiles(directory=str(swagger_ui_path)), name="credits_db_docs_assets")

    @app.get(path, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{assets}/swagger-ui.css",
            swagger_favicon_url=f"{root}{assets}/favicon-32x32.png",
            # No badge asking validator.swagger.io about the schema.
            swagger_ui_parameters={"validatorUrl": None},
        )


OPERATOR_ROLE = "super_admin"
"""The demo user whose token is an operator token (``is_admin``: the admin page, the backfill).

:attr:`Caller.is_admin` is the application's notion of an operator, not a role; the
demo gives it to one user, the one with the most privileged role."""

_TOKEN_NOTES = {
    "member": "in the team_admin's pool",
    OPERATOR_ROLE: "operator token: the admin page and the backfill",
    "Recruiter": "an unknown role: the member allocation",
}


def seed_demo(url: str, secret: str) -> dict[str, str]:
    """Install credits-db into an empty database with demo users; return a token per role.

    The users are :func:`credits_db.demo.seed`'s: one per
    :data:`~credits_db.demo.DEMO_ROLES` waits for the backfill, one more per role
    signed up after the install, and that ``member`` is in the ``team_admin``'s
    pool. Each user who signed up has a token, keyed by their role (the NULL
    role's user is left out): a user token, except the :data:`OPERATOR_ROLE`'s,
    which is an operator token (``is_admin``).
    """
    return {role: make_demo_token(secret, user_id, is_admin=role == OPERATOR_ROLE)
            for role, user_id in demo.seed(url).items()}


def _print_demo_tokens(tokens: dict[str, str], base: str) -> None:
    print("demo bearer tokens, one per demo user, by role (Authorization: Bearer <token>):")
    for role, token in tokens.items():
        note = f"  ({_TOKEN_NOTES[role]})" if role in _TOKEN_NOTES else ""
        print(f"  {role:12} {token}{note}")
    print(f"admin page: {base}/admin/login  (paste the {OPERATOR_ROLE} token)")
    print(f"API docs:   {base}/docs")
    print(f"try: curl -H 'Authorization: Bearer {tokens['member']}' "
          f"{base}/api/credits/status", flush=True)


MINT_CODE = ("import os; from credits_db.http import make_demo_token as t; "
             "print(t(os.environ['CREDITS_DB_API_SECRET'], '<users.id>'))")
"""The Python that mints a token for a user, as ``credits-db serve --url`` prints it."""


def _print_token_recipe(url: str, base: str) -> None:
    print(f"serving {urls.redact(url)} as it is (nothing migrated or seeded)")
    print("bearer tokens are demo tokens (user:<users.id>.<HMAC-SHA256 with "
          "$CREDITS_DB_API_SECRET>); mint one for a user with:")
    # This interpreter: the one that has credits-db installed.
    print(f"  {shlex.quote(sys.executable)} -c {shlex.quote(MINT_CODE)}")
    print("  (is_admin=True after the id mints an operator token: the admin page and the "
          "backfill; see docs/integration.md)")
    print(f"admin page: {base}/admin/login")
    print(f"API docs:   {base}/docs", flush=True)


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
    ``secret`` or ``$CREDITS_DB_API_SECRET``, which must then be set, and the
    command that mints one (:data:`MINT_CODE`) is printed. Without: start an
    embedded PostgreSQL, install credits-db, seed demo users (:func:`seed_demo`),
    print their bearer tokens by role, and serve until interrupted (the data is
    then deleted).

    Raises:
        ValueError: a URL is given but no secret.
    """
    import uvicorn

    secret = secret or os.environ.get("CREDITS_DB_API_SECRET") or None
    url = url or urls.from_environment()
    if url is not None:
        if secret is None:
            raise ValueError("set CREDITS_DB_API_SECRET (the HMAC secret of the demo tokens)")
        _print_token_recipe(url, f"http://{host}:{port}")
        uvicorn.run(create_app(url, demo_token_auth(secret)), host=host, port=port)
        return

    from credits_db.embedded import embedded_server

    secret = secret or secrets.token_urlsafe(32)
    print("starting an embedded PostgreSQL server (demo data, deleted on exit)",
          file=sys.stderr, flush=True)
    with _sigterm_exits(), embedded_server() as server_url:
        tokens = seed_demo(server_url, secret)
        _print_demo_tokens(tokens, f"http://{host}:{port}")
        uvicorn.run(create_app(server_url, demo_token_auth(secret)), host=host, port=port)
