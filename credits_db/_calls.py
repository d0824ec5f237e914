"""One definition of every call: the query to send, its parameters, how to read the result.

The sync functions (``credits_db``) and the async ones (``credits_db.aio``) both
build their calls here and differ only in how they run them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, LiteralString, TypeVar
from uuid import UUID

from credits_db._queries import QUERIES
from credits_db.errors import AlreadyRefunded, CreditsError, InvalidAmount, InvalidArgument
from credits_db.models import (
    AllocationReport,
    BackfillBatch,
    BackfillSummary,
    Balance,
    CreditOperation,
    IntegrityProblem,
    LedgerEntry,
    TeamMember,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """A single-value statement and the parser of its one result value."""

    query: LiteralString
    params: Mapping[str, Any] = field(default_factory=dict)
    parse: Callable[[Any], T] = field(default=lambda value: value)


def backfill(*, dry_run: bool, limit: int | None) -> Call[BackfillSummary]:
    """``backfill_user_credits(p_dry_run, p_limit)``."""
    _int4(limit, "limit", InvalidArgument)
    return Call(
        QUERIES["backfill"], {"dry_run": dry_run, "limit": limit}, BackfillSummary.from_json
    )


def backfill_batch(*, after: UserId | None, limit: int) -> Call[BackfillBatch]:
    """``backfill_user_credits_batch(p_after_user_id, p_limit)``."""
    _int4(limit, "limit", InvalidArgument)
    return Call(QUERIES["backfill_batch"],
                {"after": None if after is None else str(after), "limit": limit},
                BackfillBatch.from_json)


def allocation_report() -> Call[AllocationReport]:
    """``credit_allocation_report()``."""
    return Call(QUERIES["allocation_report"], {}, AllocationReport.from_json)


UserId = UUID | str
"""A user id: a UUID or its text form."""


INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1


def _int4(value: int | None, name: str, error: type[CreditsError]) -> int | None:
    # PostgreSQL would resolve a bigint argument to no function at all (42883);
    # name the real problem instead.
    if value is not None and not INT4_MIN <= value <= INT4_MAX:
        raise error(f"{name} {value} is outside the integer range (at most {INT4_MAX})")
    return value


def _credit_params(user_id: UserId, amount: int, source: str, description: str | None,
                   idempotency_key: str | None) -> dict[str, Any]:
    _int4(amount, "amount", InvalidAmount)
    return {"user_id": str(user_id), "amount": amount, "source": source,
            "description": description, "idempotency_key": idempotency_key}


def debit(user_id: UserId, amount: int, *, source: str, description: str | None,
          idempotency_key: str | None) -> Call[CreditOperation]:
    """``debit_credits(...)``."""
    return Call(QUERIES["debit"],
                _credit_params(user_id, amount, source, description, idempotency_key),
                CreditOperation.from_json)


def grant(user_id: UserId, amount: int, *, source: str, description: str | None,
          idempotency_key: str | None) -> Call[CreditOperation]:
    """``grant_credits(...)``."""
    return Call(QUERIES["grant"],
                _credit_params(user_id, amount, source, description, idempotency_key),
                CreditOperation.from_json)


def refund(log_id: int, *, description: str | None) -> Call[CreditOperation]:
    """``refund_credits(p_log_id, p_description)``."""
    if not -(2**63) <= log_id < 2**63:
        raise AlreadyRefunded(f"log entry {log_id} does not exist")
    return Call(QUERIES["refund"], {"log_id": log_id, "description": description},
                CreditOperation.from_json)


def balance(user_id: UserId) -> Call[Balance]:
    """``get_credit_balance(p_user_id)``."""
    return Call(QUERIES["balance"], {"user_id": str(user_id)}, Balance.from_json)


def add_team_member(team_admin_id: UserId, team_member_id: UserId) -> Call[None]:
    """``add_team_member(p_team_admin_id, p_team_member_id)``."""
    return Call(QUERIES["add_team_member"],
                {"team_admin_id": str(team_admin_id), "team_member_id": str(team_member_id)},
                lambda _value: None)


def remove_team_member(team_admin_id: UserId, team_member_id: UserId) -> Call[bool]:
    """``remove_team_member(p_team_admin_id, p_team_member_id)``."""
    return Call(QUERIES["remove_team_member"],
                {"team_admin_id": str(team_admin_id), "team_member_id": str(team_member_id)},
                bool)


def list_team_members(team_admin_id: UserId) -> Call[list[TeamMember]]:
    """The rows of ``team_credit_sharing`` for one admin."""
    return Call(QUERIES["list_team_members"], {"team_admin_id": str(team_admin_id)},
                TeamMember.list_from_json)


def verify() -> Call[list[IntegrityProblem]]:
    """``verify_credit_integrity()``."""
    return Call(QUERIES["verify"], {}, IntegrityProblem.list_from_json)


def history(user_id: UserId, *, limit: int) -> Call[list[LedgerEntry]]:
    """One account's ``credit_usage_log`` rows, newest first."""
    _int4(limit, "limit", InvalidArgument)
    return Call(QUERIES["history"], {"user_id": str(user_id), "limit": limit},
                LedgerEntry.list_from_json)


def user_id_text(user_id: UserId) -> str:
    """``user_id`` in canonical text form; a value that is not a uuid is refused here
    (``InvalidArgument``, 22P02) before anything is sent."""
    try:
        return str(user_id if isinstance(user_id, UUID) else UUID(str(user_id)))
    except ValueError:
        raise InvalidArgument(f"not a user id (a uuid): {user_id!r}", sqlstate="22P02") from None


def act_as(user_id: str) -> Call[str]:
    """``set_config('credits.user_id', user_id, true)``: until the transaction ends."""
    return Call(QUERIES["act_as"], {"user_id": user_id}, str)


def acting_user() -> Call[str | None]:
    """``current_setting('credits.user_id', true)``: NULL when never set."""
    return Call(QUERIES["acting_user"], {}, lambda value: None if value is None else str(value))
