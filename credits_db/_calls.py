"""One definition of every call: the query to send, its parameters, how to read the result.

The sync functions (``credits_db``) and the async ones (``credits_db.aio``) both
build their calls here and differ only in how they run them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, LiteralString, TypeVar

from credits_db._queries import QUERIES
from credits_db.models import AllocationReport, BackfillSummary

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """A single-value statement and the parser of its one result value."""

    query: LiteralString
    params: Mapping[str, Any] = field(default_factory=dict)
    parse: Callable[[Any], T] = field(default=lambda value: value)


def backfill(*, dry_run: bool, limit: int | None) -> Call[BackfillSummary]:
    """``backfill_user_credits(p_dry_run, p_limit)``."""
    return Call(
        QUERIES["backfill"], {"dry_run": dry_run, "limit": limit}, BackfillSummary.from_json
    )


def allocation_report() -> Call[AllocationReport]:
    """``credit_allocation_report()``."""
    return Call(QUERIES["allocation_report"], {}, AllocationReport.from_json)
