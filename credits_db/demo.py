"""The demo data of ``credits-db demo`` and ``credits-db serve``, from one place.

Both demos tell the same story (:func:`install_with_users`): a host application's
``users`` table with one user per :data:`DEMO_ROLES`, who wait for the backfill;
credits-db installed; then one more user per role signing up, whom the trigger
allocates. ``credits-db demo`` goes on to backfill and report, then shows a month of
renewals on a monthly role (:func:`run`, :func:`renewal_month`); ``credits-db serve``
puts the ``member`` in the ``team_admin``'s pool (:func:`seed`) and serves the
database. The statements are in ``credits_db/demo.sql``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from credits_db import functions, migrate, urls
from credits_db._queries import parse
from credits_db.models import AllocationReport, BackfillSummary

DEMO_ROLES: tuple[str | None, ...] = (
    "member", "admin", "team_admin", "RecruitPro", "super_admin", None, "Recruiter",
)
"""One demo user per entry, before the install and again after it: every role of the
default allocations, a NULL role and an unknown role (these two get the member's)."""

_STATEMENTS = parse(files("credits_db").joinpath("demo.sql").read_text(encoding="utf-8"))

DemoUsers = list[tuple[str | None, UUID]]
"""Demo users as ``(role, id)`` pairs, in :data:`DEMO_ROLES` order."""


def _quiet(_message: str) -> None:
    """Report nothing (the default ``say``)."""


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def _add_users(conn: psycopg.Connection[Any], prefix: str) -> DemoUsers:
    rows = conn.execute(_STATEMENTS["add_users"],
                        {"roles": list(DEMO_ROLES), "prefix": prefix}).fetchall()
    return [(role, UUID(str(user_id))) for role, user_id in rows]


def install_with_users(conn: psycopg.Connection[Any], url: str,
                       say: Callable[[str], None] = _quiet) -> DemoUsers:
    """Create the host's users, install credits-db at ``url``, then sign more users up.

    ``conn`` (autocommit) is on the empty database at ``url``. ``say`` receives one
    line after each step. Returns the users who signed up after the install.
    """
    conn.execute(_STATEMENTS["create_host_users"])
    _add_users(conn, "before")
    say(f"created {len(DEMO_ROLES)} users before installing credits-db")
    migrate.upgrade(url)
    pending = functions.backfill(conn, dry_run=True)
    say(f"installed credits-db {migrate.current(url)}; "
        f"{pending.users_without_credits} users wait for the backfill")
    signed_up = _add_users(conn, "after")
    say(f"signed up {len(DEMO_ROLES)} users after installing (the trigger allocated)")
    return signed_up


@contextmanager
def _scratch_database(server_url: str) -> Iterator[str]:
    """A new database on the server at ``server_url`` (its URL), dropped afterwards."""
    name = f"credits_db_demo_{uuid.uuid4().hex[:8]}"
    with _connect(server_url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urls.with_database(server_url, name)
    finally:
        with _connect(server_url) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))


RENEWING_ROLE = "member"
RENEWAL_INTERVAL = "1 month"
ROLLOVER_CAP = 100
SPENT = 200
PROMO_CREDITS = 50
PROMO_LASTS = "7 days"
MONTH_LATER = "1 month 1 day"
"""The renewal step: the member role renews monthly with a rollover cap of 100; a new
member spends 200 of their 350, is granted 50 credits that last 7 days; then the
renewal and the expiry sweep run as of a month and a day later."""


@dataclass(frozen=True)
class DemoEntry:
    """A ledger row of the renewal step's account."""

    amount: int
    type: str
    source: str
    description: str | None


@dataclass(frozen=True)
class RenewalMonth:
    """What the renewal step did (:func:`renewal_month`).

    Attributes:
        renewal_interval: the role's interval as PostgreSQL writes it (``1 mon``).
        allowance, period_ends_at: the member's allowance on signing up, and when
            its period ends.
        promo_expires_at: the expiry of the ``promo`` grant.
        renewal, expiry: what ``renew_allowances()`` and ``expire_credits()``
            answered (as of :data:`MONTH_LATER` from now).
        entries: the account's ledger after both, oldest first.
        remaining_credits, next_period_ends_at: the balance then, and the end of
            the new period.
    """

    role: str
    renewal_interval: str
    rollover_cap: int
    user_id: UUID
    email: str
    allowance: int
    period_ends_at: datetime
    spent: int
    promo: int
    promo_expires_at: datetime
    renewal: dict[str, Any]
    expiry: dict[str, Any]
    entries: list[DemoEntry]
    remaining_credits: int
    next_period_ends_at: datetime


def _one(conn: psycopg.Connection[Any], name: str, params: Mapping[str, Any]) -> Any:
    row = conn.execute(_STATEMENTS[name], params).fetchone()
    assert row is not None
    return row[0]


def _period(conn: psycopg.Connection[Any], user_id: UUID) -> tuple[int, int, datetime]:
    data = _one(conn, "period", {"user_id": user_id})
    return (int(data["remaining_credits"]), int(data["period_allowance"]),
            datetime.fromisoformat(data["period_ends_at"]).astimezone(UTC))


def renewal_month(conn: psycopg.Connection[Any], say: Callable[[str], None] = _quiet
                  ) -> RenewalMonth:
    """A month of renewals on a monthly role, on the installed database of ``conn``.

    :data:`RENEWING_ROLE` renews every :data:`RENEWAL_INTERVAL` with a rollover cap;
    a new user of it spends part of the allowance and gets a grant that expires;
    then ``renew_allowances()`` and ``expire_credits()`` run as of a month and a day
    later: the unspent allowance expires, the new one and the capped rollover come,
    and the grant expires. Changes ``role_credits``: for a throwaway database only.
    """
    interval = _one(conn, "renew_role", {"role": RENEWING_ROLE, "interval": RENEWAL_INTERVAL,
                                          "rollover_cap": ROLLOVER_CAP})
    say(f"{RENEWING_ROLE} renews every {interval} now, rolling over at most {ROLLOVER_CAP} "
        "unspent credits")
    email = f"monthly-{RENEWING_ROLE}@example.com"
    user_id = UUID(str(_one(conn, "sign_up", {"email": email, "role": RENEWING_ROLE})))
    _, allowance, ends_at = _period(conn, user_id)
    functions.debit(conn, user_id, SPENT, source="search", description="the demo's spending")
    promo_expires_at = _one(conn, "grant_expiring", {
        "user_id": user_id, "amount": PROMO_CREDITS, "lasts": PROMO_LASTS,
        "description": f"promotion, lasts {PROMO_LASTS}"}).astimezone(UTC)
    say(f"signed up {email}: {allowance} credits until {ends_at:%Y-%m-%d %H:%M} UTC; "
        f"spent {SPENT}; granted {PROMO_CREDITS} that expire {promo_expires_at:%Y-%m-%d}")
    renewal = _one(conn, "renew_later", {"later": MONTH_LATER})
    expiry = _one(conn, "expire_later", {"later": MONTH_LATER})
    say(f"{MONTH_LATER} later: renew_allowances() renewed {renewal['accounts_renewed']} "
        f"accounts, expire_credits() expired {expiry['credits_expired']} credits")
    remaining, _, next_ends_at = _period(conn, user_id)
    entries = [DemoEntry(int(e["amount"]), str(e["type"]), str(e["source"]), e["description"])
               for e in _one(conn, "entries", {"user_id": user_id})]
    return RenewalMonth(
        role=RENEWING_ROLE, renewal_interval=str(interval), rollover_cap=ROLLOVER_CAP,
        user_id=user_id, email=email, allowance=allowance, period_ends_at=ends_at,
        spent=SPENT, promo=PROMO_CREDITS, promo_expires_at=promo_expires_at,
        renewal=dict(renewal), expiry=dict(expiry), entries=entries,
        remaining_credits=remaining, next_period_ends_at=next_ends_at)


def run(server_url: str, say: Callable[[str], None] = _quiet
        ) -> tuple[BackfillSummary, AllocationReport, RenewalMonth]:
    """The ``credits-db demo`` story in a database of its own, dropped afterwards.

    Parameters:
        server_url: a libpq URL of a server where the caller may create databases.
        say: receives a line after each step (see :func:`install_with_users`).

    Returns:
        What the backfill did, the allocation report after it, and the month of
        renewals (:func:`renewal_month`) that follows.
    """
    with _scratch_database(server_url) as url, _connect(url) as conn:
        install_with_users(conn, url, say)
        summary, report = functions.backfill(conn), functions.allocation_report(conn)
        return summary, report, renewal_month(conn, say)


def seed(url: str) -> dict[str, UUID]:
    """The ``credits-db serve`` data: install into the empty database at ``url``, with users.

    The demo users of :func:`install_with_users`; the ``member`` who signed up joins
    the ``team_admin``'s pool. Returns the ids of those who signed up, by role (the
    NULL role's user is left out).
    """
    with _connect(url) as conn:
        signed_up = install_with_users(conn, url)
        ids = {role: user_id for role, user_id in signed_up if role is not None}
        functions.add_team_member(conn, ids["team_admin"], ids["member"])
    return ids
