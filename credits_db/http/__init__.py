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

Modules: :mod:`~credits_db.http.auth` (the caller, tokens),
:mod:`~credits_db.http.errors` (exceptions to HTTP responses),
:mod:`~credits_db.http.schemas` (the JSON bodies), :mod:`~credits_db.http.routes`
(the router), :mod:`~credits_db.http.admin` (the admin pages, HTML from
:mod:`~credits_db.http.templates`) and :mod:`~credits_db.http.app` (an app and the
``credits-db serve`` server).

Needs the ``api`` extra: fastapi, uvicorn and psycopg_pool.
"""

from credits_db.http._queries import Pool
from credits_db.http.app import create_app, serve
from credits_db.http.auth import (
    TOKEN_COOKIE,
    AuthDependency,
    Caller,
    demo_token_auth,
    make_demo_token,
    parse_demo_token,
    request_token,
    require_admin,
)
from credits_db.http.errors import HTTP_STATUS, ErrorMappingRoute, error_content
from credits_db.http.routes import create_router
from credits_db.http.schemas import ErrorDetail, ErrorResponse

__all__ = [
    "HTTP_STATUS",
    "TOKEN_COOKIE",
    "AuthDependency",
    "Caller",
    "ErrorDetail",
    "ErrorMappingRoute",
    "ErrorResponse",
    "Pool",
    "create_app",
    "create_router",
    "demo_token_auth",
    "error_content",
    "make_demo_token",
    "parse_demo_token",
    "request_token",
    "require_admin",
    "serve",
]
