"""The reads of the admin page: chart data, the ledger's backfills, the user lookup.

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


def user_id_by_email(email: str) -> Call[UUID | None]:
    """The id of the user with ``email`` (None if nobody has it)."""
    return Call(QUERIES["admin_user_id_by_email"], {"email": email},
                lambda value: None if value is None else UUID(str(value)))


def user_lookup(user_id: UUID) -> Call[UserRecord | None]:
    """One user's record for the lookup page (None if there is no such user)."""
    return Call(QUERIES["admin_user_lookup"], {"user_id": str(user_id)},
                lambda value: None if value is None else UserRecord.from_json(value))
