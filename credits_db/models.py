"""Typed, immutable results of the credits-db functions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NULL_ROLE_KEY = "(null)"
"""The key under which ``by_role`` reports users whose role is NULL."""


@dataclass(frozen=True)
class RoleAllocation:
    """Users allocated and credits given for one role."""

    users: int
    credits: int


@dataclass(frozen=True)
class BackfillSummary:
    """What one ``backfill_user_credits()`` call did (or, in a dry run, would do).

    Attributes:
        users_total: users in the database.
        users_without_credits: users with no balance row when the call started.
        users_backfilled: users this call allocated.
        credits_allocated: credits this call allocated.
        fallback_role_users: of those, users with a NULL or unknown role
            (given the member allocation).
        by_role: per role as stored in users.role (NULL under ``"(null)"``).
        dry_run: True when nothing was written.
    """

    users_total: int
    users_without_credits: int
    users_backfilled: int
    credits_allocated: int
    fallback_role_users: int
    by_role: Mapping[str, RoleAllocation]
    dry_run: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BackfillSummary:
        """Build from the jsonb ``backfill_user_credits()`` returns."""
        return cls(
            users_total=int(data["users_total"]),
            users_without_credits=int(data["users_without_credits"]),
            users_backfilled=int(data["users_backfilled"]),
            credits_allocated=int(data["credits_allocated"]),
            fallback_role_users=int(data["fallback_role_users"]),
            by_role=dict(
                {
                    role: RoleAllocation(users=int(v["users"]), credits=int(v["credits"]))
                    for role, v in sorted(data["by_role"].items())
                }
            ),
            dry_run=bool(data["dry_run"]),
        )


@dataclass(frozen=True)
class RoleReport:
    """Users of one role and the credits they hold."""

    users: int
    users_with_credits: int
    total_credits: int
    remaining_credits: int


@dataclass(frozen=True)
class AllocationReport:
    """The verification report: who has credits, who still waits, credits per role."""

    users_total: int
    users_with_credits: int
    users_without_credits: int
    by_role: Mapping[str, RoleReport]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AllocationReport:
        """Build from the jsonb ``credit_allocation_report()`` returns."""
        return cls(
            users_total=int(data["users_total"]),
            users_with_credits=int(data["users_with_credits"]),
            users_without_credits=int(data["users_without_credits"]),
            by_role=dict(
                {
                    role: RoleReport(
                        users=int(v["users"]),
                        users_with_credits=int(v["users_with_credits"]),
                        total_credits=int(v["total_credits"]),
                        remaining_credits=int(v["remaining_credits"]),
                    )
                    for role, v in sorted(data["by_role"].items())
                }
            ),
        )
