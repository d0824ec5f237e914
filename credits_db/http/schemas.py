"""The JSON bodies of the HTTP API: requests, responses and errors (pydantic models).

Field names are camelCase in JSON (:class:`CamelModel`); the ``of`` class methods
build a response from the credits-db result it presents.
"""

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from credits_db.models import (
    AccountStatus,
    AllocationFailure,
    BackfillSummary,
    Balance,
    CreditLot,
    CreditOperation,
    Expiry,
    ExpirySummary,
    LedgerEntry,
    LotState,
    Overview,
    Renewal,
    TeamMember,
)

INT32_MAX = 2**31 - 1

NO_NUL = r"^[^\x00]*$"
"""The pattern of every text field: PostgreSQL text cannot hold a NUL character."""


def _json_integer(value: Any) -> Any:
    # JSON Schema's integer: a number with no fraction (1 or 1.0), never the text
    # "10" or true, which pydantic's lax mode would read as 10 and 1.
    if isinstance(value, bool | str | bytes):
        raise PydanticCustomError("int_type", "Input should be a JSON integer, not {kind}",
                                  {"kind": type(value).__name__})
    return value


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _json_time(value: Any) -> Any:
    # JSON Schema's date-time: text. pydantic's lax mode would also read a number,
    # or text of digits, as seconds since 1970.
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise PydanticCustomError("datetime_type",
                                  "Input should be an RFC 3339 date-time with an offset, "
                                  "e.g. 2030-01-31T00:00:00Z")
    return value


AwareTime = Annotated[AwareDatetime, BeforeValidator(_json_time)]
"""A time with a UTC offset, from an RFC 3339 text only (a naive time is refused)."""

Int32 = Annotated[int, Field(ge=-(2**31), le=INT32_MAX), BeforeValidator(_json_integer)]
"""A 32-bit integer field that takes only a JSON number with no fraction."""
Positive32 = Annotated[int, Field(ge=1, le=INT32_MAX), BeforeValidator(_json_integer)]
""":data:`Int32` from 1 (the bounds come before the validator, so the schema has them)."""


class ErrorDetail(BaseModel):
    """What went wrong: the SQLSTATE, the credits-db exception name and a message."""

    code: str = Field(description="The SQLSTATE (CR001..., 22023, 42501, 28000 ...).")
    type: str = Field(description="The credits_db exception name (InsufficientCredits ...).")
    message: str
    detail: str | None = Field(default=None, description="The database's DETAIL, when it gave one.")
    field: str | None = Field(
        default=None, description="The request field at fault (InvalidArgument), when known.")
    details: list[dict[str, Any]] | None = Field(
        default=None, description="For request validation: one entry per invalid field.")


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class CamelModel(BaseModel):
    """A model whose JSON field names are camelCase (Python attributes stay snake_case)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class ExpiryOut(CamelModel):
    """When the soonest open lots of an account expire, and the credits they still hold."""

    expires_at: datetime
    credits: int

    @classmethod
    def of(cls, expiry: Expiry | None) -> "ExpiryOut | None":
        """From a :class:`credits_db.Expiry` (None for none)."""
        return None if expiry is None else cls(expires_at=expiry.expires_at,
                                               credits=expiry.credits)


class RenewalOut(CamelModel):
    """When an account's current allowance period ends, and what its role gives then."""

    renews_at: datetime = Field(description="The end of the current period.")
    credits: int = Field(description="The allowance the role gives for the next period.")
    rollover_cap: int = Field(
        description="At most this much of what is left of the current allowance then "
                    "carries over (0: nothing).")

    @classmethod
    def of(cls, renewal: Renewal | None) -> "RenewalOut | None":
        """From a :class:`credits_db.Renewal` (None for none)."""
        return None if renewal is None else cls(renews_at=renewal.renews_at,
                                                credits=renewal.credits,
                                                rollover_cap=renewal.rollover_cap)


_OWN_SPENDABLE = ("Own account's remaining credits less those of lots past their expiry "
                  "that the expiry sweep has not recorded yet (they cannot be spent); 0 "
                  "without an account.")
_NEXT_EXPIRY = "The soonest expiry of the own account's open lots; null when none expires."
_POOL_SPENDABLE = "The team pool's remaining credits less its lapsed ones; null outside a pool."
_POOL_NEXT_EXPIRY = "The soonest expiry of the team pool's open lots; null when none (or no pool)."
_NEXT_RENEWAL = ("When the own account's allowance period ends and what its role gives then; "
                 "null when the role does not renew (or without an account).")
_POOL_NEXT_RENEWAL = ("The team pool's next renewal (a pool renews with its admin's role); "
                      "null when that role does not renew (or no pool).")


class CreditStatus(CamelModel):
    """The caller's balance (``GET /api/credits/status``)."""

    user_id: UUID
    has_account: bool = Field(description="False until the signup trigger or backfill ran.")
    total_credits: int = Field(description="Own account; 0 without an account.")
    used_credits: int = Field(description="Own account: spent, and expired.")
    remaining_credits: int = Field(description="Own account's remaining credits.")
    own_spendable_credits: int = Field(description=_OWN_SPENDABLE)
    next_expiry: ExpiryOut | None = Field(description=_NEXT_EXPIRY)
    next_renewal: RenewalOut | None = Field(description=_NEXT_RENEWAL)
    team_admin_id: UUID | None = Field(description="The pool the caller is a member of.")
    team_pool_remaining: int | None
    team_pool_spendable: int | None = Field(description=_POOL_SPENDABLE)
    team_pool_next_expiry: ExpiryOut | None = Field(description=_POOL_NEXT_EXPIRY)
    team_pool_next_renewal: RenewalOut | None = Field(description=_POOL_NEXT_RENEWAL)
    spendable_credits: int = Field(
        description="The largest amount one /use call accepts now (own or pool, never split).")

    @classmethod
    def of(cls, balance: Balance) -> "CreditStatus":
        """From a :class:`credits_db.Balance`."""
        own = balance.own
        return cls(
            user_id=balance.user_id, has_account=own is not None,
            total_credits=own.total_credits if own else 0,
            used_credits=own.used_credits if own else 0,
            remaining_credits=own.remaining_credits if own else 0,
            own_spendable_credits=own.spendable_credits if own else 0,
            next_expiry=ExpiryOut.of(balance.next_expiry),
            next_renewal=RenewalOut.of(balance.next_renewal),
            team_admin_id=balance.team_admin_id, team_pool_remaining=balance.team_pool_remaining,
            team_pool_spendable=balance.team_pool_spendable,
            team_pool_next_expiry=ExpiryOut.of(balance.team_pool_next_expiry),
            team_pool_next_renewal=RenewalOut.of(balance.team_pool_next_renewal),
            spendable_credits=balance.spendable,
        )


class CheckRequest(CamelModel):
    """``POST /api/credits/check``."""

    required_credits: Positive32


class CheckResponse(CamelModel):
    """Whether one /use call of ``requiredCredits`` would succeed right now."""

    has_enough_credits: bool
    remaining_credits: int = Field(
        description="The spendable amount (own or team pool), the same figure /use checks.")
    required_credits: int


class UseRequest(CamelModel):
    """``POST /api/credits/use``: spend credits for the caller."""

    credits: Int32 = Field(
        json_schema_extra={"minimum": 1},
        description="Credits to spend, a JSON integer 1 .. 2^31-1 (below 1: 422 InvalidAmount, "
                    "CR006; \"10\", true or 1.5: 422 InvalidArgument).")
    source: str = Field(default="usage", min_length=1, max_length=200, pattern=NO_NUL,
                        strict=True, description="What they were spent on.")
    description: str | None = Field(default=None, max_length=2000, pattern=NO_NUL, strict=True)
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=NO_NUL, strict=True,
        description="Retry with the same key after a timeout: it is never spent twice.")


class Operation(CamelModel):
    """A debit (or its replay)."""

    log_id: int
    account_user_id: UUID = Field(description="The account debited (the team admin's for "
                                              "a pool debit).")
    actor_user_id: UUID | None
    credits: int
    remaining_credits: int = Field(description="The debited account's remaining credits.")
    from_team_pool: bool
    replayed: bool = Field(description="True: an earlier call with this key is returned; "
                                       "nothing was spent now.")

    @classmethod
    def of(cls, op: CreditOperation) -> "Operation":
        """From a :class:`credits_db.CreditOperation`."""
        return cls(log_id=op.log_id, account_user_id=op.account_user_id,
                   actor_user_id=op.actor_user_id, credits=op.amount,
                   remaining_credits=op.remaining_credits, from_team_pool=op.from_team_pool,
                   replayed=op.replayed)


class TeamMemberOut(CamelModel):
    """One member of the caller's team pool."""

    team_member_id: UUID
    created_at: datetime

    @classmethod
    def of(cls, member: TeamMember) -> "TeamMemberOut":
        """From a :class:`credits_db.TeamMember`."""
        return cls(team_member_id=member.team_member_id, created_at=member.created_at)


class TeamMembers(CamelModel):
    """The caller's team pool."""

    team_admin_id: UUID
    member_limit: int = Field(description="Members the caller's role allows (0: no team).")
    members: list[TeamMemberOut]


class AddTeamMemberRequest(CamelModel):
    """``POST /api/credits/team-members``."""

    team_member_id: UUID


class RemovedResponse(CamelModel):
    """``DELETE /api/credits/team-members/{id}``: whether they were a member."""

    removed: bool


class LedgerRow(CamelModel):
    """One ``credit_usage_log`` row."""

    id: int
    account_user_id: UUID
    actor_user_id: UUID | None = Field(description="Who spent, for a team member's pool debit.")
    amount: int = Field(description="Signed: credits > 0, debits and expiries < 0.")
    type: Literal["credit", "debit", "expire"] | str
    source: str
    description: str | None
    idempotency_key: str | None
    created_at: datetime
    lot_id: int | None = Field(
        description="For an expiry (type expire): the lot whose unspent credits expired.")

    @classmethod
    def of(cls, entry: LedgerEntry) -> "LedgerRow":
        """From a :class:`credits_db.LedgerEntry`."""
        return cls(id=entry.id, account_user_id=entry.user_id, actor_user_id=entry.actor_user_id,
                   amount=entry.amount, type=entry.type, source=entry.source,
                   description=entry.description, idempotency_key=entry.idempotency_key,
                   created_at=entry.created_at, lot_id=entry.lot_id)


class History(CamelModel):
    """The caller's account ledger, newest first, one page at a time."""

    entries: list[LedgerRow]
    next_cursor: str | None = Field(
        description="Pass it as ?cursor= for the next page; null on the last page.")


class AllocationFailureOut(CamelModel):
    """A recorded failure of the signup allocation."""

    failed_at: datetime
    sqlstate: str
    message: str

    @classmethod
    def of(cls, failure: AllocationFailure) -> "AllocationFailureOut":
        """From the core model (the DETAIL, which may quote row values, stays server-side)."""
        return cls(failed_at=failure.failed_at, sqlstate=failure.sqlstate,
                   message=failure.message)


class LotOut(CamelModel):
    """One lot of the caller's account: credits received together, spent and expiring
    together."""

    lot_id: int
    source: str
    log_id: int | None = Field(description="The ledger entry that created the lot.")
    amount: int
    remaining: int
    taken: int = Field(description="Spent from this lot.")
    expired: int
    expires_at: datetime | None = Field(description="null: never expires.")
    priority: int = Field(description="0..100, lower spent first.")
    created_at: datetime
    state: LotState = Field(
        description="open: spendable. lapsed: past its expiry, not swept yet (not spendable). "
                    "expired: swept. spent.")

    @classmethod
    def of(cls, lot: CreditLot) -> "LotOut":
        """From a :class:`credits_db.CreditLot`."""
        return cls(lot_id=lot.lot_id, source=lot.source, log_id=lot.log_id, amount=lot.amount,
                   remaining=lot.remaining, taken=lot.taken, expired=lot.expired,
                   expires_at=lot.expires_at, priority=lot.priority, created_at=lot.created_at,
                   state=lot.state)


class CreditsOverview(CamelModel):
    """The credits part of the billing overview."""

    remaining_credits: int = Field(description="Own account.")
    own_spendable_credits: int = Field(description=_OWN_SPENDABLE)
    next_expiry: ExpiryOut | None = Field(description=_NEXT_EXPIRY)
    next_renewal: RenewalOut | None = Field(description=_NEXT_RENEWAL)
    expiring_lots: list[LotOut] = Field(
        description="The own account's open lots expiring within 30 days, soonest first "
                    "(at most 10).")
    team_pool_remaining: int | None
    team_pool_spendable: int | None = Field(description=_POOL_SPENDABLE)
    team_pool_next_expiry: ExpiryOut | None = Field(description=_POOL_NEXT_EXPIRY)
    team_pool_next_renewal: RenewalOut | None = Field(description=_POOL_NEXT_RENEWAL)
    spendable_credits: int
    team_admin_id: UUID | None
    recent_usage: list[LedgerRow] = Field(
        description="Last 10 rows: the own account's (for a team admin incl. members' pool "
                    "debits) and the pool debits the caller made as a member.")
    account_status: AccountStatus = Field(
        description="active: the account has a balance row. awaiting_backfill: no credits "
                    "yet, the next backfill allocates them. allocation_failed: no credits "
                    "yet because the signup allocation failed (allocationFailure says how); "
                    "the next backfill allocates them.")
    account_message: str | None = Field(
        description="Why there are no credits yet, in one sentence (null when active).")
    allocation_failure: AllocationFailureOut | None

    @classmethod
    def of(cls, overview: Overview) -> "CreditsOverview":
        """The overview as the API shows it."""
        balance = overview.balance
        return cls(
            remaining_credits=balance.own.remaining_credits if balance.own else 0,
            own_spendable_credits=balance.own.spendable_credits if balance.own else 0,
            next_expiry=ExpiryOut.of(balance.next_expiry),
            next_renewal=RenewalOut.of(overview.next_renewal),
            expiring_lots=[LotOut.of(lot) for lot in overview.expiring_lots],
            team_pool_remaining=balance.team_pool_remaining,
            team_pool_spendable=balance.team_pool_spendable,
            team_pool_next_expiry=ExpiryOut.of(balance.team_pool_next_expiry),
            team_pool_next_renewal=RenewalOut.of(overview.team_pool_next_renewal),
            spendable_credits=balance.spendable, team_admin_id=balance.team_admin_id,
            recent_usage=[LedgerRow.of(e) for e in overview.recent_usage],
            account_status=overview.status,
            account_message=overview.message,
            allocation_failure=None if overview.failure is None
            else AllocationFailureOut.of(overview.failure),
        )


class BillingOverview(CamelModel):
    """``GET /api/billing/overview``."""

    credits: CreditsOverview


class RoleAllocationOut(CamelModel):
    """Users allocated and credits given for one role."""

    users: int
    credits: int


class BackfillRequest(CamelModel):
    """Optional body of ``POST /api/admin/backfill-credits``."""

    dry_run: bool = Field(default=False, strict=True,
                          description="A JSON boolean: true reports and writes nothing "
                                      "(0, \"off\" or \"false\" are refused, never read as false).")
    limit: Positive32 | None = Field(
        default=None, description="At most this many users (one batch).")


class BackfillResult(CamelModel):
    """What the backfill did (or, as a dry run, would do)."""

    users_total: int
    users_without_credits: int
    users_backfilled: int
    credits_allocated: int
    fallback_role_users: int
    dry_run: bool
    by_role: dict[str, RoleAllocationOut]

    @classmethod
    def of(cls, summary: BackfillSummary) -> "BackfillResult":
        """From a :class:`credits_db.BackfillSummary`."""
        return cls(
            users_total=summary.users_total, users_without_credits=summary.users_without_credits,
            users_backfilled=summary.users_backfilled,
            credits_allocated=summary.credits_allocated,
            fallback_role_users=summary.fallback_role_users, dry_run=summary.dry_run,
            by_role={role: RoleAllocationOut(users=a.users, credits=a.credits)
                     for role, a in summary.by_role.items()},
        )


class ExpireRequest(CamelModel):
    """Optional body of ``POST /api/admin/credits/expire``."""

    as_of: AwareTime | None = Field(
        default=None,
        description="Expire the lots that lapsed at or before this time (RFC 3339, with an "
                    "offset; later than now expires early). Default: now.")
    limit: Positive32 | None = Field(
        default=None, description="At most this many lots, soonest expiry first (one batch); "
                                  "call again until lotsExpired is 0.")


class ExpireResult(CamelModel):
    """What the expiry sweep did."""

    lots_expired: int
    credits_expired: int
    accounts: int = Field(description="Accounts that lost credits.")
    accounts_skipped: int = Field(
        description="Accounts with lapsed lots left alone because a debit, grant or refund "
                    "held them: call again later.")
    as_of: datetime

    @classmethod
    def of(cls, summary: ExpirySummary) -> "ExpireResult":
        """From a :class:`credits_db.ExpirySummary`."""
        return cls(lots_expired=summary.lots_expired, credits_expired=summary.credits_expired,
                   accounts=summary.accounts, accounts_skipped=summary.accounts_skipped,
                   as_of=summary.as_of)
