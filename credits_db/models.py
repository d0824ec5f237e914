"""Typed, immutable results of the credits-db functions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal
from uuid import UUID

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
        users_skipped: users deleted while the call ran, so not allocated.
    """

    users_total: int
    users_without_credits: int
    users_backfilled: int
    credits_allocated: int
    fallback_role_users: int
    by_role: Mapping[str, RoleAllocation]
    dry_run: bool
    users_skipped: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BackfillSummary:
        """Build from the jsonb ``backfill_user_credits()`` returns."""
        return cls(
            users_total=int(data["users_total"]),
            users_without_credits=int(data["users_without_credits"]),
            users_backfilled=int(data["users_backfilled"]),
            credits_allocated=int(data["credits_allocated"]),
            fallback_role_users=int(data["fallback_role_users"]),
            by_role=_role_allocations(data["by_role"]),
            dry_run=bool(data["dry_run"]),
            users_skipped=int(data["users_skipped"]),
        )


def _role_allocations(by_role: Mapping[str, Mapping[str, Any]]) -> dict[str, RoleAllocation]:
    return {role: RoleAllocation(users=int(v["users"]), credits=int(v["credits"]))
            for role, v in sorted(by_role.items())}


@dataclass(frozen=True)
class BackfillBatch:
    """What one ``backfill_user_credits_batch()`` call did.

    Attributes:
        users_scanned: users in this call's window (the next ``limit`` by id).
        users_backfilled: of those, users this call allocated.
        credits_allocated: credits this call allocated.
        fallback_role_users: of the allocated, users with a NULL or unknown role.
        by_role: per role as stored in users.role (NULL under ``"(null)"``).
        last_user_id: the window's last user, to pass as ``after`` to the next
            call; None when no user was left after the cursor.
        users_skipped: users deleted while the call ran, so not allocated.
    """

    users_scanned: int
    users_backfilled: int
    credits_allocated: int
    fallback_role_users: int
    by_role: Mapping[str, RoleAllocation]
    last_user_id: UUID | None
    users_skipped: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BackfillBatch:
        """Build from the jsonb ``backfill_user_credits_batch()`` returns."""
        last = data["last_user_id"]
        return cls(
            users_scanned=int(data["users_scanned"]),
            users_backfilled=int(data["users_backfilled"]),
            credits_allocated=int(data["credits_allocated"]),
            fallback_role_users=int(data["fallback_role_users"]),
            by_role=_role_allocations(data["by_role"]),
            last_user_id=None if last is None else UUID(last),
            users_skipped=int(data["users_skipped"]),
        )


@dataclass(frozen=True)
class RenewalSummary:
    """What ``renew_allowances()`` did: one call, or a batched run summed.

    Attributes:
        accounts_renewed: accounts given their current period's allowance.
        credits_renewed: credits of those allowances.
        credits_rolled_over: credits carried over from the periods that ended
            (at most each role's ``rollover_cap`` per account).
        credits_expired: what the ended periods' allowances still held, expired.
        accounts_skipped: accounts due but busy (another transaction held them),
            left for the next run; of a batched run, those its last call left.
        as_of: the time the renewal was judged at (every call of a batched run
            uses the first call's).
    """

    accounts_renewed: int
    credits_renewed: int
    credits_rolled_over: int
    credits_expired: int
    accounts_skipped: int
    as_of: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RenewalSummary:
        """Build from the jsonb ``renew_allowances()`` returns."""
        return cls(
            accounts_renewed=int(data["accounts_renewed"]),
            credits_renewed=int(data["credits_renewed"]),
            credits_rolled_over=int(data["credits_rolled_over"]),
            credits_expired=int(data["credits_expired"]),
            accounts_skipped=int(data["accounts_skipped"]),
            as_of=datetime.fromisoformat(data["as_of"]),
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
    allocation_failures: int = 0
    """How many of ``users_without_credits`` are waiting because their signup
    allocation failed (``credit_allocation_failures``)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AllocationReport:
        """Build from the jsonb ``credit_allocation_report()`` returns."""
        return cls(
            users_total=int(data["users_total"]),
            users_with_credits=int(data["users_with_credits"]),
            users_without_credits=int(data["users_without_credits"]),
            allocation_failures=int(data["allocation_failures"]),
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


def _uuid(value: Any) -> UUID | None:
    return None if value is None else UUID(str(value))


@dataclass(frozen=True)
class CreditOperation:
    """The outcome of a debit, grant or refund (or of its replay).

    Attributes:
        log_id: the ledger row that records it.
        account_user_id: the account credited or debited (a team admin's for a pool debit).
        actor_user_id: who caused it when not the account holder (the team member), else None.
        amount: credits moved, always positive.
        remaining_credits: the account's remaining credits right after it.
        from_team_pool: True when a member's debit was taken from the team admin's pool.
        replayed: True when an earlier call with the same idempotency key is being returned.
    """

    log_id: int
    account_user_id: UUID
    actor_user_id: UUID | None
    amount: int
    remaining_credits: int
    from_team_pool: bool
    replayed: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CreditOperation:
        """Build from the jsonb debit_credits/grant_credits/refund_credits return."""
        account = _uuid(data["account_user_id"])
        assert account is not None
        return cls(
            log_id=int(data["log_id"]),
            account_user_id=account,
            actor_user_id=_uuid(data.get("actor_user_id")),
            amount=int(data["amount"]),
            remaining_credits=int(data["remaining_credits"]),
            from_team_pool=bool(data["from_team_pool"]),
            replayed=bool(data["replayed"]),
        )


@dataclass(frozen=True)
class Expiry:
    """When an account's soonest open lots expire, and the credits they still hold."""

    expires_at: datetime
    credits: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Expiry | None:
        """Build from a ``next_expiry`` of ``get_credit_balance()`` (None for none)."""
        if data is None:
            return None
        return cls(datetime.fromisoformat(data["expires_at"]), int(data["credits"]))


@dataclass(frozen=True)
class Renewal:
    """When an account's current allowance period ends, and what its role gives then.

    Attributes:
        renews_at: the end of the current period, when the next allowance comes.
        credits: the allowance the role gives for the next period.
        rollover_cap: at most this much of what the current allowance has left
            then carries over into the next period (0: nothing does).
    """

    renews_at: datetime
    credits: int
    rollover_cap: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Renewal | None:
        """Build from a ``next_renewal`` of ``get_credit_balance()`` (None for none)."""
        if data is None:
            return None
        return cls(datetime.fromisoformat(data["renews_at"]), int(data["credits"]),
                   int(data["rollover_cap"]))


@dataclass(frozen=True)
class OwnBalance:
    """An account's own balance row.

    Attributes:
        total_credits: every credit the account received.
        used_credits: what was spent, and what expired.
        remaining_credits: total less used: spendable lots, and lapsed lots the
            expiry sweep (:func:`credits_db.expire`) has not reached yet.
        spendable_credits: remaining less what lapsed without a sweep yet: the
            most a debit can take from this account now.
        next_expiry: the soonest expiry of a lot that still holds credits, and
            how many credits expire then (None when no open lot expires).
        next_renewal: when the current allowance period ends and what the role
            gives then (None when the account's role does not renew).
    """

    total_credits: int
    used_credits: int
    remaining_credits: int
    spendable_credits: int
    next_expiry: Expiry | None
    # A default, so code that builds an OwnBalance from before renewal keeps working.
    next_renewal: Renewal | None = None


@dataclass(frozen=True)
class Balance:
    """What a user can spend: own balance, team pool, and ``spendable``.

    ``spendable`` is the largest amount a single debit would accept right now:
    the larger of ``own.spendable_credits`` and ``team_pool_spendable`` (a debit
    is never split). ``team_pool_spendable``, ``team_pool_next_expiry`` and
    ``team_pool_next_renewal`` are the pool's as :class:`OwnBalance` has them for
    the user's own account (None outside a pool, for a pool with no open lot that
    expires, and for a pool whose admin's role does not renew: a pool renews with
    its admin's role).
    """

    user_id: UUID
    own: OwnBalance | None
    team_admin_id: UUID | None
    team_pool_remaining: int | None
    spendable: int
    team_pool_spendable: int | None
    team_pool_next_expiry: Expiry | None
    team_pool_next_renewal: Renewal | None = None

    @property
    def next_expiry(self) -> Expiry | None:
        """The own account's next expiry (None without an account, or when nothing expires)."""
        return None if self.own is None else self.own.next_expiry

    @property
    def next_renewal(self) -> Renewal | None:
        """The own account's next renewal (None without an account, or when its role
        does not renew)."""
        return None if self.own is None else self.own.next_renewal

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Balance:
        """Build from the jsonb ``get_credit_balance()`` returns."""
        own = data.get("own")
        user = _uuid(data["user_id"])
        assert user is not None
        pool = data.get("team_pool_remaining")
        pool_spendable = data.get("team_pool_spendable")
        return cls(
            user_id=user,
            own=None if own is None else OwnBalance(
                int(own["total_credits"]), int(own["used_credits"]), int(own["remaining_credits"]),
                int(own["spendable_credits"]), Expiry.from_json(own.get("next_expiry")),
                Renewal.from_json(own.get("next_renewal")),
            ),
            team_admin_id=_uuid(data.get("team_admin_id")),
            team_pool_remaining=None if pool is None else int(pool),
            spendable=int(data["spendable"]),
            team_pool_spendable=None if pool_spendable is None else int(pool_spendable),
            team_pool_next_expiry=Expiry.from_json(data.get("team_pool_next_expiry")),
            team_pool_next_renewal=Renewal.from_json(data.get("team_pool_next_renewal")),
        )


LotState = Literal["open", "lapsed", "expired", "spent"]
"""Where a lot stands: ``open`` (spendable), ``lapsed`` (past its expiry, not swept
yet: not spendable), ``expired`` (swept: its unspent credits expired) or ``spent``."""


@dataclass(frozen=True)
class CreditLot:
    """One lot of an account (``get_credit_lots()``): credits received together.

    Attributes:
        lot_id: the lot (``credit_lots.id``).
        source: where its credits came from (``signup``, ``backfill``, a grant's source).
        log_id: the ledger entry that created it (None for the opening lot of an
            account that existed before lots).
        amount: credits it was given.
        remaining: what is left of it (credits in a lapsed lot still count here
            until the sweep expires them).
        taken: what debits took from it.
        expired: what expired from it.
        expires_at: when its unspent credits expire (None: never).
        priority: 0..100, lower spent first (50 by default).
        created_at: when it was received.
        state: ``open``, ``lapsed``, ``expired`` or ``spent``.
    """

    lot_id: int
    source: str
    log_id: int | None
    amount: int
    remaining: int
    taken: int
    expired: int
    expires_at: datetime | None
    priority: int
    created_at: datetime
    state: LotState

    @classmethod
    def list_from_json(cls, rows: list[Mapping[str, Any]]) -> list[CreditLot]:
        """Build the list from the jsonb array ``get_credit_lots()`` returns."""
        return [
            cls(lot_id=int(r["lot_id"]), source=str(r["source"]),
                log_id=None if r["log_id"] is None else int(r["log_id"]),
                amount=int(r["amount"]), remaining=int(r["remaining"]), taken=int(r["taken"]),
                expired=int(r["expired"]),
                expires_at=None if r["expires_at"] is None
                else datetime.fromisoformat(r["expires_at"]),
                priority=int(r["priority"]), created_at=datetime.fromisoformat(r["created_at"]),
                state=_lot_state(r["state"]))
            for r in rows
        ]


_LOT_STATES: Final = ("open", "lapsed", "expired", "spent")


def _lot_state(value: Any) -> LotState:
    if value not in _LOT_STATES:
        raise ValueError(f"unknown lot state {value!r}")
    state: LotState = value
    return state


@dataclass(frozen=True)
class ExpirySummary:
    """What ``expire_credits()`` did (or, from :func:`credits_db.expire_all`, every
    batch together).

    Attributes:
        lots_expired: lots whose unspent credits expired (one ``expire`` entry each).
        credits_expired: the credits that expired.
        accounts: accounts that lost credits (summed over the batches of a walk:
            an account whose lots fell into two batches counts twice).
        accounts_skipped: accounts with lots due that were busy (locked by a
            debit, grant or refund) and so were left for the next run; for a
            walk, those its last call left.
        as_of: the time lots were expired as of (lapsed at or before it).
    """

    lots_expired: int
    credits_expired: int
    accounts: int
    accounts_skipped: int
    as_of: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExpirySummary:
        """Build from the jsonb ``expire_credits()`` returns."""
        return cls(lots_expired=int(data["lots_expired"]),
                   credits_expired=int(data["credits_expired"]),
                   accounts=int(data["accounts"]), accounts_skipped=int(data["accounts_skipped"]),
                   as_of=datetime.fromisoformat(data["as_of"]))


@dataclass(frozen=True)
class TeamMember:
    """One member of a team admin's credit pool."""

    team_admin_id: UUID
    team_member_id: UUID
    created_at: datetime

    @classmethod
    def list_from_json(cls, rows: list[Mapping[str, Any]]) -> list[TeamMember]:
        """Build the list from a jsonb array of team_credit_sharing rows."""
        return [
            cls(UUID(r["team_admin_id"]), UUID(r["team_member_id"]),
                datetime.fromisoformat(r["created_at"]))
            for r in rows
        ]


@dataclass(frozen=True)
class IntegrityProblem:
    """One violated invariant reported by ``verify_credit_integrity()``."""

    user_id: UUID | None
    problem: str

    @classmethod
    def list_from_json(cls, rows: list[Mapping[str, Any]]) -> list[IntegrityProblem]:
        """Build the list from a jsonb array of (user_id, problem)."""
        return [cls(_uuid(r["user_id"]), str(r["problem"])) for r in rows]


@dataclass(frozen=True)
class LedgerEntry:
    """One row of ``credit_usage_log``.

    ``type`` is ``credit``, ``debit`` or ``expire`` (a lot's unspent credits
    expired: a negative amount, source ``expiry``); ``lot_id`` names the lot of an
    ``expire`` entry (None for the others).
    """

    id: int
    user_id: UUID
    actor_user_id: UUID | None
    amount: int
    type: str
    source: str
    description: str | None
    idempotency_key: str | None
    created_at: datetime
    lot_id: int | None = None

    @classmethod
    def list_from_json(cls, rows: list[Mapping[str, Any]]) -> list[LedgerEntry]:
        """Build the list from a jsonb array of log rows."""
        entries = []
        for r in rows:
            user = _uuid(r["user_id"])
            assert user is not None
            entries.append(cls(
                id=int(r["id"]), user_id=user, actor_user_id=_uuid(r["actor_user_id"]),
                amount=int(r["amount"]), type=str(r["type"]), source=str(r["source"]),
                description=r["description"], idempotency_key=r["idempotency_key"],
                created_at=datetime.fromisoformat(r["created_at"]),
                lot_id=None if r.get("lot_id") is None else int(r["lot_id"]),
            ))
        return entries


AccountStatus = Literal["active", "awaiting_backfill", "allocation_failed"]
"""Why a user has, or has not yet, credits."""

ACCOUNT_ACTIVE: Final = "active"
"""The user has a balance row: spending and the overview work."""
ACCOUNT_AWAITING_BACKFILL: Final = "awaiting_backfill"
"""No balance row and no recorded failure: the user existed before credits-db was
installed (or signed up with the trigger disabled); the next backfill allocates them."""
ACCOUNT_ALLOCATION_FAILED: Final = "allocation_failed"
"""No balance row because the signup allocation failed (the failure is recorded);
the next backfill allocates them and clears the record."""

_NEXT_STEP: dict[AccountStatus, str] = {
    ACCOUNT_ACTIVE: "nothing to do",
    ACCOUNT_AWAITING_BACKFILL: "run the backfill: credits-db backfill",
    ACCOUNT_ALLOCATION_FAILED: "fix the cause of the failure, then run the backfill: "
                               "credits-db backfill",
}


@dataclass(frozen=True)
class AllocationFailure:
    """A recorded failure of a user's signup allocation (``credit_allocation_failures``)."""

    user_id: UUID
    failed_at: datetime
    sqlstate: str
    message: str
    detail: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> AllocationFailure | None:
        """Build from a ``credit_allocation_failures`` row as jsonb (None for none)."""
        if data is None:
            return None
        return cls(UUID(str(data["user_id"])), datetime.fromisoformat(data["failed_at"]),
                   str(data["sqlstate"]), str(data["message"]), data.get("detail"))

    @classmethod
    def list_from_json(cls, rows: list[Mapping[str, Any]]) -> list[AllocationFailure]:
        """Build the list from a jsonb array of rows."""
        return [f for f in map(cls.from_json, rows) if f is not None]


def account_status(own: OwnBalance | None, failure: AllocationFailure | None
                   ) -> AccountStatus:
    """One of the ``ACCOUNT_*`` values: why a user has (or has no) credits."""
    if own is not None:
        return ACCOUNT_ACTIVE
    return ACCOUNT_AWAITING_BACKFILL if failure is None else ACCOUNT_ALLOCATION_FAILED


@dataclass(frozen=True)
class Overview:
    """What ``GET /api/billing/overview`` answers for a user: the balance (with the
    next expiry and the next renewal, own and pool), the last usage rows (own account,
    and pool debits made as a member), the own account's lots that expire soon and the
    account's status.

    ``expiring_lots``: the own account's open lots expiring within
    ``EXPIRING_WITHIN`` (30 days), soonest first, at most ``EXPIRING_LOTS`` (10).
    """

    balance: Balance
    recent_usage: list[LedgerEntry]
    failure: AllocationFailure | None
    expiring_lots: list[CreditLot]

    @property
    def status(self) -> AccountStatus:
        """``active``, ``awaiting_backfill`` or ``allocation_failed``."""
        return account_status(self.balance.own, self.failure)

    @property
    def next_renewal(self) -> Renewal | None:
        """The own account's next renewal (``balance.next_renewal``)."""
        return self.balance.next_renewal

    @property
    def team_pool_next_renewal(self) -> Renewal | None:
        """The team pool's next renewal (``balance.team_pool_next_renewal``; None outside
        a pool)."""
        return self.balance.team_pool_next_renewal

    @property
    def message(self) -> str | None:
        """Why there are no credits yet, in one sentence (None when active)."""
        if self.status == ACCOUNT_ACTIVE:
            return None
        if self.failure is None:
            return "This account has no credits yet: it is waiting for the credits backfill."
        return ("This account has no credits yet: its signup allocation failed "
                f"({self.failure.sqlstate}) and the next credits backfill will allocate it.")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Overview:
        """Build from the jsonb of the ``overview`` query."""
        return cls(Balance.from_json(data["balance"]),
                   LedgerEntry.list_from_json(data["recent_usage"]),
                   AllocationFailure.from_json(data.get("failure")),
                   CreditLot.list_from_json(data["expiring_lots"]))


@dataclass(frozen=True)
class UserExplanation:
    """Everything that decides what credits one user has, for an operator."""

    user_id: UUID
    email: str | None
    role: str | None
    entitlement: int
    """The credits the user's role allocates (the member allocation for a NULL or unknown role)."""
    role_is_fallback: bool
    allocated_credits: int | None
    """The largest role allocation the account was given (None without a balance row)."""
    team_members: list[UUID]
    overview: Overview

    @property
    def status(self) -> AccountStatus:
        """``active``, ``awaiting_backfill`` or ``allocation_failed``."""
        return self.overview.status

    @property
    def next_step(self) -> str:
        """What an operator should do next, in one line."""
        return _NEXT_STEP[self.status]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], overview: Overview) -> UserExplanation:
        """Build from the jsonb of the ``explain_user`` query and the user's overview."""
        allocated = data.get("allocated_credits")
        return cls(
            user_id=UUID(str(data["user_id"])), email=data.get("email"), role=data.get("role"),
            entitlement=int(data["entitlement"]), role_is_fallback=bool(data["role_is_fallback"]),
            allocated_credits=None if allocated is None else int(allocated),
            team_members=[UUID(str(m)) for m in data["team_members"]],
            overview=overview,
        )


@dataclass(frozen=True)
class HistoryPage:
    """One page of an account's ledger, newest first.

    Attributes:
        entries: at most the ``limit`` asked for.
        next_cursor: pass it as ``cursor`` for the page after this one; None when
            this page holds the oldest row. Opaque text (today the last row's log
            id): the next page starts after that row in (``created_at``, ``id``)
            order, so rows written meanwhile never shift a page.
    """

    entries: list[LedgerEntry]
    next_cursor: str | None
