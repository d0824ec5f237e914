"""credits-db: a Postgres-native credit system.

The rules live in PL/pgSQL (installed by :mod:`credits_db.migrate`); this
package calls those functions and returns typed results. See README.md.
"""

from credits_db.errors import (
    AlreadyInTeam,
    AlreadyRefunded,
    AppendOnlyViolation,
    ConnectionLost,
    CreditsError,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    NotTeamAdmin,
    PermissionDenied,
    RetryableError,
    SelfTeamMembership,
    TeamFull,
    UnknownUser,
)
from credits_db.functions import allocation_report, backfill
from credits_db.models import AllocationReport, BackfillSummary, RoleAllocation, RoleReport

__all__ = [
    "AllocationReport",
    "AlreadyInTeam",
    "AlreadyRefunded",
    "AppendOnlyViolation",
    "BackfillSummary",
    "ConnectionLost",
    "CreditsError",
    "IdempotencyConflict",
    "InsufficientCredits",
    "InvalidAmount",
    "InvalidArgument",
    "NotTeamAdmin",
    "PermissionDenied",
    "RetryableError",
    "RoleAllocation",
    "RoleReport",
    "SelfTeamMembership",
    "TeamFull",
    "UnknownUser",
    "allocation_report",
    "backfill",
]
