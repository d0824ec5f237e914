"""One definition of every call: the query to send, its parameters, how to read the result.

The sync functions (``credits_db``) and the async ones (``credits_db.aio``) both
build their calls here and differ only in how they run them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, LiteralString, TypeVar
from uuid import UUID

from credits_db._queries import QUERIES
from credits_db.errors import (
    AlreadyRefunded,
    CreditsError,
    InvalidAmount,
    InvalidArgument,
    UnknownUser,
)
from credits_db.models import (
    AllocationFailure,
    AllocationReport,
    BackfillBatch,
    BackfillSummary,
    Balance,
    CreditLot,
    CreditOperation,
    ExpirySummary,
    HistoryPage,
    IntegrityProblem,
    LedgerEntry,
    Overview,
    RoleAllocation,
    TeamMember,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """A single-value statement and the parser of its one result value."""

    query: LiteralString
    params: Mapping[str, Any] = field(default_factory=dict)
    parse: Callable[[Any], T] = field(default=lambda value: value)

    def __post_init__(self) -> None:
        # PostgreSQL text cannot hold NUL, and psycopg refuses it on the client
        # with a DataError that has no SQLSTATE: name the argument instead.
        for name, value in self.params.items():
            if isinstance(value, str) and "\x00" in value:
                raise InvalidArgument(f"{name} must not contain a NUL character (\\x00)",
                                      field=name)


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


class BackfillWalk:
    """A batched backfill under way: the next call to make, and the totals so far.

    :func:`credits_db.backfill_all` and :func:`credits_db.aio.backfill_all` keep
    one of these and only run the calls it hands out, each committed on its own::

        walk = BackfillWalk(batch_size, on_batch)
        while (call := walk.next_batch()) is not None:
            walk.add_batch(run(call))
        return walk.finish(run(walk.final_call()))

    The batches walk users in primary-key order (``backfill_user_credits_batch``)
    until one reports no ``last_user_id``; the final ``backfill_user_credits()``
    allocates anyone the walk left behind and gives the users' totals.
    """

    def __init__(self, batch_size: int, on_batch: Callable[[int], None] | None = None) -> None:
        if not 1 <= batch_size <= INT4_MAX:
            raise InvalidArgument(f"batch_size must be between 1 and {INT4_MAX}, not {batch_size}")
        self._batch_size = batch_size
        self._on_batch = on_batch
        self._after: UUID | None = None
        self._walked = False
        self._by_role: dict[str, RoleAllocation] = {}
        self._users = self._credits = self._fallback = self._skipped = 0

    def next_batch(self) -> Call[BackfillBatch] | None:
        """The next window's call, or None when the walk has reached the last user."""
        return None if self._walked else backfill_batch(after=self._after, limit=self._batch_size)

    def add_batch(self, batch: BackfillBatch) -> None:
        """Count what one window's call did, and move the cursor past it."""
        self._add(batch.by_role, batch.users_backfilled, batch.credits_allocated,
                  batch.fallback_role_users, batch.users_skipped)
        self._walked = batch.last_user_id is None
        self._after = batch.last_user_id

    def final_call(self) -> Call[BackfillSummary]:
        """The closing ``backfill_user_credits()``: users behind the cursor, and the totals."""
        return backfill(dry_run=False, limit=None)

    def finish(self, rest: BackfillSummary) -> BackfillSummary:
        """The summary of the whole walk, given what the final call did."""
        walked = self._users  # they were waiting too, before the final call looked
        self._add(rest.by_role, rest.users_backfilled, rest.credits_allocated,
                  rest.fallback_role_users, rest.users_skipped)
        return BackfillSummary(
            users_total=rest.users_total,
            users_without_credits=walked + rest.users_without_credits,
            users_backfilled=self._users,
            credits_allocated=self._credits,
            fallback_role_users=self._fallback,
            by_role=dict(sorted(self._by_role.items())),
            dry_run=False,
            users_skipped=self._skipped,
        )

    def _add(self, by_role: Mapping[str, RoleAllocation], users: int, credits: int,
             fallback: int, skipped: int) -> None:
        for role, allocation in by_role.items():
            before = self._by_role.get(role, RoleAllocation(0, 0))
            self._by_role[role] = RoleAllocation(before.users + allocation.users,
                                                 before.credits + allocation.credits)
        self._users += users
        self._credits += credits
        self._fallback += fallback
        self._skipped += skipped
        if self._on_batch is not None:
            self._on_batch(users)


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


def _aware(value: datetime | None, name: str) -> datetime | None:
    # A naive datetime would be read in the session's TimeZone, which the caller
    # may not know (and a pooler may share): refuse it rather than guess.
    if value is not None and value.utcoffset() is None:
        raise InvalidArgument(f"{name} must be a timezone-aware datetime (with tzinfo), "
                              f"not the naive {value.isoformat()}", field=name)
    return value


def debit(user_id: UserId, amount: int, *, source: str, description: str | None,
          idempotency_key: str | None) -> Call[CreditOperation]:
    """``debit_credits(...)``."""
    return Call(QUERIES["debit"],
                _credit_params(user_id, amount, source, description, idempotency_key),
                CreditOperation.from_json)


def grant(user_id: UserId, amount: int, *, source: str, description: str | None,
          idempotency_key: str | None, expires_at: datetime | None = None,
          priority: int | None = None) -> Call[CreditOperation]:
    """``grant_credits(..., p_expires_at, p_priority)``."""
    params = _credit_params(user_id, amount, source, description, idempotency_key)
    params["expires_at"] = _aware(expires_at, "expires_at")
    params["priority"] = _int4(priority, "priority", InvalidArgument)
    return Call(QUERIES["grant"], params, CreditOperation.from_json)


def refund(log_id: int, *, description: str | None) -> Call[CreditOperation]:
    """``refund_credits(p_log_id, p_description)``."""
    if not -(2**63) <= log_id < 2**63:
        raise AlreadyRefunded(f"log entry {log_id} does not exist")
    return Call(QUERIES["refund"], {"log_id": log_id, "description": description},
                CreditOperation.from_json)


def balance(user_id: UserId) -> Call[Balance]:
    """``get_credit_balance(p_user_id)``."""
    return Call(QUERIES["balance"], {"user_id": str(user_id)}, Balance.from_json)


def lots(user_id: UserId) -> Call[list[CreditLot]]:
    """``get_credit_lots(p_user_id)``."""
    return Call(QUERIES["lots"], {"user_id": str(user_id)}, CreditLot.list_from_json)


def expire(*, as_of: datetime | None, limit: int | None) -> Call[ExpirySummary]:
    """``expire_credits(p_as_of, p_limit)``; ``as_of`` None is the server's now()."""
    return Call(QUERIES["expire"], {"as_of": _aware(as_of, "as_of"),
                                    "limit": _int4(limit, "limit", InvalidArgument)},
                ExpirySummary.from_json)


def lots_due(*, as_of: datetime | None) -> Call[int]:
    """How many lots lapsed by ``as_of`` (None: now) still hold credits: what
    :func:`expire` would expire (a progress bar's total)."""
    return Call(QUERIES["lots_due"], {"as_of": _aware(as_of, "as_of")}, int)


class ExpiryWalk:
    """A batched expiry under way: the next call to make, and the totals so far.

    :func:`credits_db.expire_all` and :func:`credits_db.aio.expire_all` keep one
    of these and only run the calls it hands out, each committed on its own::

        walk = ExpiryWalk(batch_size, on_batch, as_of)
        while (call := walk.next_batch()) is not None:
            walk.add_batch(run(call))
        return walk.finish()

    Each call is ``expire_credits(as_of, batch_size)``; the walk stops after a
    call that expired nothing. The first call's ``as_of`` (the server's now()
    when none is given) is passed to every later call, so the walk expires what
    had lapsed by one moment and always ends.
    """

    def __init__(self, batch_size: int, on_batch: Callable[[int], None] | None = None,
                 as_of: datetime | None = None) -> None:
        if not 1 <= batch_size <= INT4_MAX:
            raise InvalidArgument(f"batch_size must be between 1 and {INT4_MAX}, not {batch_size}",
                                  field="batch_size")
        self._batch_size = batch_size
        self._on_batch = on_batch
        self._as_of = _aware(as_of, "as_of")
        self._done = False
        self._last: ExpirySummary | None = None
        self._lots = self._credits = self._accounts = 0

    def next_batch(self) -> Call[ExpirySummary] | None:
        """The next call, or None once a call expired nothing."""
        return None if self._done else expire(as_of=self._as_of, limit=self._batch_size)

    def add_batch(self, report: ExpirySummary) -> None:
        """Count what one call did; the walk is over when it expired nothing."""
        self._as_of = report.as_of
        self._last = report
        self._lots += report.lots_expired
        self._credits += report.credits_expired
        self._accounts += report.accounts
        self._done = report.lots_expired == 0
        if self._on_batch is not None:
            self._on_batch(report.lots_expired)

    def finish(self) -> ExpirySummary:
        """The summary of the whole walk: lots, credits and accounts summed; the
        accounts the last call skipped (still busy, left for the next run)."""
        assert self._last is not None, "finish() before the first batch"
        return ExpirySummary(lots_expired=self._lots, credits_expired=self._credits,
                             accounts=self._accounts,
                             accounts_skipped=self._last.accounts_skipped,
                             as_of=self._last.as_of)


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


def history(user_id: UserId, *, limit: int, cursor: str | None = None
            ) -> Call[list[LedgerEntry]]:
    """One account's ``credit_usage_log`` rows, newest first, after ``cursor``."""
    return Call(QUERIES["history"], _history_params(user_id, limit, cursor),
                LedgerEntry.list_from_json)


def history_page(user_id: UserId, *, limit: int, cursor: str | None = None
                 ) -> Call[HistoryPage]:
    """:func:`history` as a page: one row more is read to know whether another page follows."""
    params = _history_params(user_id, limit, cursor)
    params["limit"] = limit + 1

    def page(value: Any) -> HistoryPage:
        entries = LedgerEntry.list_from_json(value)
        if len(entries) <= limit:
            return HistoryPage(entries, None)
        return HistoryPage(entries[:limit], history_cursor(entries[limit - 1]))

    return Call(QUERIES["history"], params, page)


def _history_params(user_id: UserId, limit: int, cursor: str | None) -> dict[str, Any]:
    if not 1 <= limit <= INT4_MAX:
        raise InvalidArgument(f"limit must be between 1 and {INT4_MAX}, not {limit}",
                              field="limit")
    return {"user_id": str(user_id), "limit": limit,
            "after_id": None if cursor is None else _parse_cursor(cursor)}


def history_cursor(entry: LedgerEntry) -> str:
    """The cursor of the page that starts after ``entry``: its log id, as text.

    Opaque to callers: pass it back as it came. A cursor naming no row of the
    account gives an empty page.
    """
    return str(entry.id)


def _parse_cursor(cursor: str) -> int:
    """The log id a :func:`history_cursor` names."""
    if not (cursor.isascii() and cursor.isdigit() and 0 < int(cursor) < 2**63):
        raise InvalidArgument(f"cursor {cursor!r} is not a history cursor (pass a "
                              "next_cursor as it came)", field="cursor")
    return int(cursor)


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


OVERVIEW_ROWS = 10
"""How many usage rows the overview shows."""

EXPIRING_WITHIN = timedelta(days=30)
"""How far ahead the overview lists the lots that expire."""

EXPIRING_LOTS = 10
"""How many expiring lots the overview lists at most (soonest first)."""


def overview(user_id: UserId, *, limit: int = OVERVIEW_ROWS) -> Call[Overview]:
    """Balance, last usage rows, lots expiring soon and allocation failure of one user,
    in one snapshot."""
    _int4(limit, "limit", InvalidArgument)
    return Call(QUERIES["overview"], {"user_id": user_id_text(user_id), "limit": limit,
                                      "expiring_within": EXPIRING_WITHIN,
                                      "expiring_lots": EXPIRING_LOTS},
                Overview.from_json)


def find_user(who: UserId) -> Call[UUID]:
    """The id of the one user whose id or email is ``who``: ``UnknownUser`` for none,
    ``InvalidArgument`` when several users share the email."""
    text = str(who)
    if "\x00" in text:
        raise InvalidArgument("a user id or email cannot contain a NUL byte", sqlstate="22023")

    def single(ids: list[str]) -> UUID:
        if not ids:
            raise UnknownUser(f"no user has the id or email {text!r}", sqlstate="CR005")
        if len(ids) > 1:
            raise InvalidArgument(f"several users have the email {text!r}: give the id",
                                  sqlstate="22023")
        return UUID(ids[0])

    return Call(QUERIES["find_user"], {"who": text}, single)


def explain_user(user_id: UUID) -> Call[dict[str, Any]]:
    """What decides one user's credits (role, entitlement, allocation, pool members)."""
    def found(data: dict[str, Any] | None) -> dict[str, Any]:
        if data is None:
            raise UnknownUser(f"unknown user {user_id}", sqlstate="CR005")
        return data

    return Call(QUERIES["explain_user"], {"user_id": str(user_id)}, found)


def allocation_failures(*, limit: int) -> Call[list[AllocationFailure]]:
    """The recorded signup allocation failures, newest first."""
    _int4(limit, "limit", InvalidArgument)
    return Call(QUERIES["allocation_failures"], {"limit": limit}, AllocationFailure.list_from_json)
