"""The reads of the admin page: chart data, the ledger's backfills, expiring lots,
renewals, the user lookup.

The statements are the ``admin_*`` sections of ``credits_db/http/queries.sql``;
each reader returns one jsonb value, parsed here into a frozen dataclass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

from credits_db._calls import Call
from credits_db.http._queries import QUERIES


@dataclass(frozen=True)
class DailyTotal:
    """Credits one source moved on one UTC day: positive for allocations, negative for spending."""

    day: date
    source: str
    type: str
    credits: int


@dataclass(frozen=True)
class DailyLedger:
    """The log's per-day totals over a window ending ``today`` (the server's UTC date)."""

    today: date
    rows: list[DailyTotal]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DailyLedger:
        """Build from ``admin_daily_ledger``'s jsonb."""
        return cls(
            today=date.fromisoformat(data["today"]),
            rows=[DailyTotal(date.fromisoformat(r["day"]), str(r["source"]), str(r["type"]),
                             int(r["credits"])) for r in data["rows"]],
        )


@dataclass(frozen=True)
class PoolFill:
    """One team pool: its admin, how many of the role's seats are taken, credits left."""

    team_admin_id: UUID
    email: str | None
    members: int
    member_limit: int
    remaining_credits: int

    @classmethod
    def list_from_json(cls, rows: list[Mapping[str, Any]]) -> list[PoolFill]:
        """Build from ``admin_fullest_pools``'s jsonb array."""
        return [cls(UUID(r["team_admin_id"]), r["email"], int(r["members"]),
                    int(r["member_limit"]), int(r["remaining_credits"])) for r in rows]


@dataclass(frozen=True)
class LedgerBackfills:
    """The ledger's ``backfill`` rows: the newest one's time and all-time totals."""

    last_at: datetime | None
    allocations: int
    credits: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LedgerBackfills:
        """Build from ``admin_last_backfill``'s jsonb."""
        last = data["last_at"]
        return cls(None if last is None else datetime.fromisoformat(last),
                   int(data["allocations"]), int(data["credits"]))


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class LotTotals:
    """Open lots (still holding credits) of a span of expiry times.

    Attributes:
        oldest: the earliest expiry among them (only for the lapsed lots).
    """

    lots: int
    credits: int
    accounts: int
    oldest: datetime | None = None


@dataclass(frozen=True)
class ExpiryDay:
    """The open lots expiring on one UTC day."""

    day: date
    lots: int
    credits: int
    accounts: int


@dataclass(frozen=True)
class ExpiringLot:
    """One open lot, its account and what it still holds."""

    lot_id: int
    user_id: UUID
    email: str | None
    role: str | None
    source: str
    amount: int
    remaining: int
    expires_at: datetime


@dataclass(frozen=True)
class ExpiringLots:
    """Credits expiring within ``days`` of ``as_of``, and those lapsed but not swept.

    Attributes:
        lapsed: lots past their expiry that still hold credits: ``expire_credits()``
            has not run since they lapsed.
        coming: lots expiring after ``as_of`` and within ``days``.
        by_day: ``coming`` per UTC day (days without lots left out).
        soonest: the first of ``coming``, soonest first.
    """

    as_of: datetime
    days: int
    lapsed: LotTotals
    coming: LotTotals
    by_day: list[ExpiryDay]
    soonest: list[ExpiringLot]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExpiringLots:
        """Build from ``admin_expiring_lots``'s jsonb."""
        lapsed, coming = data["lapsed"], data["coming"]
        return cls(
            as_of=datetime.fromisoformat(data["as_of"]), days=int(data["days"]),
            lapsed=LotTotals(int(lapsed["lots"]), int(lapsed["credits"]),
                             int(lapsed["accounts"]), _time(lapsed["oldest"])),
            coming=LotTotals(int(coming["lots"]), int(coming["credits"]),
                             int(coming["accounts"])),
            by_day=[ExpiryDay(date.fromisoformat(d["day"]), int(d["lots"]), int(d["credits"]),
                              int(d["accounts"])) for d in coming["by_day"]],
            soonest=[ExpiringLot(int(r["lot_id"]), UUID(r["user_id"]), r["email"], r["role"],
                                 str(r["source"]), int(r["amount"]), int(r["remaining"]),
                                 datetime.fromisoformat(r["expires_at"]))
                     for r in data["soonest"]],
        )


@dataclass(frozen=True)
class UpcomingRenewal:
    """An account whose allowance period ends soon.

    Attributes:
        role: the user's role (``users.role``); ``renews_as`` is the
            ``role_credits`` row that renews it (``member`` for a NULL or unknown one).
        credits: the allowance the renewal will give (without the rollover).
    """

    user_id: UUID
    email: str | None
    role: str | None
    renews_as: str
    credits: int
    period_ends_at: datetime


@dataclass(frozen=True)
class RoleRenewal:
    """A role's allowance and how it renews (``renewal_interval`` None: given once)."""

    role: str
    credits: int
    renewal_interval: str | None
    rollover_cap: int


@dataclass(frozen=True)
class Renewals:
    """Renewals due at ``as_of`` and coming within ``days``, and each role's renewal.

    Attributes:
        due_accounts: accounts whose period ended and whose role renews, not renewed
            yet (``renew_allowances()`` has not run since); ``due_credits`` their
            allowances, ``oldest_due`` the earliest period end among them.
        stopped_accounts: accounts whose period ended but whose role no longer
            renews (the renewal skips them).
        coming_accounts: periods ending after ``as_of`` within ``days`` whose role
            renews; ``coming_credits`` their allowances; ``next`` the soonest.
    """

    as_of: datetime
    days: int
    due_accounts: int
    due_credits: int
    oldest_due: datetime | None
    stopped_accounts: int
    coming_accounts: int
    coming_credits: int
    next: list[UpcomingRenewal]
    roles: list[RoleRenewal]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Renewals:
        """Build from ``admin_renewals``'s jsonb."""
        due, coming = data["due"], data["coming"]
        return cls(
            as_of=datetime.fromisoformat(data["as_of"]), days=int(data["days"]),
            due_accounts=int(due["accounts"]), due_credits=int(due["credits"]),
            oldest_due=_time(due["oldest"]), stopped_accounts=int(data["stopped"]),
            coming_accounts=int(coming["accounts"]), coming_credits=int(coming["credits"]),
            next=[UpcomingRenewal(UUID(r["user_id"]), r["email"], r["role"],
                                  str(r["renews_as"]), int(r["credits"]),
                                  datetime.fromisoformat(r["period_ends_at"]))
                  for r in data["next"]],
            roles=[RoleRenewal(str(r["role"]), int(r["credits"]), r["renewal_interval"],
                               int(r["rollover_cap"])) for r in data["roles"]],
        )


@dataclass(frozen=True)
class BalanceRow:
    """A user's ``user_credits`` row."""

    total_credits: int
    used_credits: int
    remaining_credits: int
    allocated_credits: int
    created_at: datetime
    last_updated: datetime


@dataclass(frozen=True)
class PoolMembership:
    """The pool a user spends from when their own balance is short."""

    team_admin_id: UUID
    email: str | None
    since: datetime
    pool_remaining: int | None


@dataclass(frozen=True)
class PoolSeat:
    """One member of a team admin's pool."""

    team_member_id: UUID
    email: str | None
    seat: int


@dataclass(frozen=True)
class UserRecord:
    """What the lookup page shows of one user, but the ledger rows.

    Attributes:
        fallback_role: the role is NULL or has no ``role_credits`` row, so the
            member allocation applies.
        role_credits: the allocation of the role (or of the fallback).
        member_limit: seats the role allows in its own pool.
    """

    id: UUID
    role: str | None
    email: str | None
    created_at: str | None
    fallback_role: bool
    role_credits: int
    member_limit: int
    balance: BalanceRow | None
    member_of: PoolMembership | None
    members: list[PoolSeat]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UserRecord:
        """Build from ``admin_user_lookup``'s jsonb."""
        b, p = data["balance"], data["member_of"]
        return cls(
            id=UUID(data["id"]), role=data["role"], email=data["email"],
            created_at=data["created_at"], fallback_role=bool(data["fallback_role"]),
            role_credits=int(data["role_credits"]), member_limit=int(data["member_limit"]),
            balance=None if b is None else BalanceRow(
                int(b["total_credits"]), int(b["used_credits"]), int(b["remaining_credits"]),
                int(b["allocated_credits"]), datetime.fromisoformat(b["created_at"]),
                datetime.fromisoformat(b["last_updated"])),
            member_of=None if p is None else PoolMembership(
                UUID(p["team_admin_id"]), p["email"], datetime.fromisoformat(p["since"]),
                None if p["pool_remaining"] is None else int(p["pool_remaining"])),
            members=[PoolSeat(UUID(m["team_member_id"]), m["email"], int(m["seat"]))
                     for m in data["members"]],
        )


def daily_ledger(days: int) -> Call[DailyLedger]:
    """Allocations and spending per UTC day and source, the last ``days`` days."""
    return Call(QUERIES["admin_daily_ledger"], {"days": days}, DailyLedger.from_json)


def fullest_pools(limit: int) -> Call[list[PoolFill]]:
    """The ``limit`` pools with the most members."""
    return Call(QUERIES["admin_fullest_pools"], {"limit": limit}, PoolFill.list_from_json)


def last_backfill() -> Call[LedgerBackfills]:
    """The ledger's backfill rows: the newest one's time, their count and credits."""
    return Call(QUERIES["admin_last_backfill"], {}, LedgerBackfills.from_json)


def expiring_lots(days: int, limit: int) -> Call[ExpiringLots]:
    """Open lots lapsed but not swept, and those expiring within ``days`` (the
    ``limit`` soonest listed)."""
    return Call(QUERIES["admin_expiring_lots"], {"days": days, "limit": limit},
                ExpiringLots.from_json)


def renewals(days: int, limit: int) -> Call[Renewals]:
    """Renewals due now and within ``days`` (the ``limit`` soonest listed), and the
    roles' renewal settings."""
    return Call(QUERIES["admin_renewals"], {"days": days, "limit": limit}, Renewals.from_json)


def user_id_by_email(email: str) -> Call[UUID | None]:
    """The id of the user with ``email`` (None if nobody has it)."""
    return Call(QUERIES["admin_user_id_by_email"], {"email": email},
                lambda value: None if value is None else UUID(str(value)))


def user_lookup(user_id: UUID) -> Call[UserRecord | None]:
    """One user's record for the lookup page (None if there is no such user)."""
    return Call(QUERIES["admin_user_lookup"], {"user_id": str(user_id)},
                lambda value: None if value is None else UserRecord.from_json(value))
