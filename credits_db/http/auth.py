"""Who is calling: the :class:`Caller`, the bearer token of a request, and demo tokens.

The host application brings its own authentication (any FastAPI dependency that
returns a :class:`Caller`); the demo tokens here serve ``credits-db serve``,
``examples/service.py`` and the tests.
"""

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

TOKEN_COOKIE = "credits_db_token"  # noqa: S105 (a cookie name)
"""The cookie the admin login stores the bearer token in (HttpOnly, SameSite=Strict,
path limited to the admin pages)."""

LOGIN_COOKIE = "credits_db_login"
"""The admin login's pre-session cookie: a random value the sign-in form must echo
(login CSRF; HttpOnly, SameSite=Strict, path limited to the admin pages)."""


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


def require_admin(auth: AuthDependency) -> Callable[..., Caller]:
    """A dependency: the :class:`Caller` ``auth`` returns, if an administrator; else 403.

    The 403 maps to ``42501 PermissionDenied`` (:func:`~credits_db.http.error_content`).
    """

    def admin(caller: Annotated[Caller, Depends(auth)]) -> Caller:
        if not caller.is_admin:
            raise HTTPException(403, "administrators only")
        return caller

    return admin
