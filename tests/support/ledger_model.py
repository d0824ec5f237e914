"""A small Python model of the ledger's rules, for the state machine test (no tests here).

It knows no SQL. Each operation returns what the database must answer, or raises
:class:`ModelError` with the SQLSTATE the database must raise, and then has changed
nothing. The rules are those of sql/007, 008, 013..020 and the issue 13 design:

- an account is one life of a user id: deleting the user ends it, a re-created id
  opens a new one (the old entries stay in the log, and count for nothing);
- ``allocated`` is the largest role allocation the account was given: a role change
  tops the account up to the new role's allocation, never lowers it;
- idempotency keys belong to the caller: (spender, 'debit', key) or
  (account, 'grant', key); they die with their owner;
- credits are lots (revision 0010): every credit but a refund is a lot with an
  optional expiry and a priority (default 50). A lot with either is tracked:
  it keeps what was taken from it and what expired. The untracked lots are one
  pool, the account's remaining less what tracked lots hold, spent oldest
  first. A debit spends, from the one account that can pay it all, the open
  lots by priority (lower first), then soonest expiry (none last), then
  oldest, the untracked pool taking its place as a lot of priority 50 without
  expiry; a lot past its expiry is never spent. A refund gives back to the
  lots its debit took from, and what goes back to a lapsed lot expires at once
  (an 'expire' entry). The sweep (expire_credits) expires what the lots lapsed
  by its as_of still hold, soonest expiry first;
- allowances renew by role (revision 0011): a role with a renewal interval (a
  whole number of hours here) gives its credits once per period, periods being
  anchored on the account's opening (opened + k x interval). Opened in such a
  role, an account's allocation is a lot expiring with its first period;
  renew_allowances() expires what the ended period's allowance lots hold, gives
  the role's credits for the period containing its as_of (one allowance however
  many periods were missed) and rolls over at most the role's rollover_cap of
  what that allowance had unspent at its end, into the very next period only. A
  role change tops up the live period's allowance (never lowers it); an operator
  giving a role an interval records each of its accounts' current period; one
  removing it stops the renewals.

Time is a clock of whole hours (``clock``), starting at 0, that only
``pass_time`` moves; an expiry, an opening and a period end are hours on that
clock, and a lot is lapsed once the clock has reached it. The test maps an
hour to a timestamp.

Log ids are assigned by the database: an entry starts with ``log_id`` None and learns
it from the call's result or from the ledger comparison.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ALLOCATION: dict[str, int] = {"member": 350, "admin": 1000, "team_admin": 5000,
                              "RecruitPro": 1000, "super_admin": 10000}
TEAM_LIMIT: dict[str, int] = {"team_admin": 4}
FALLBACK_ROLE = "member"
RESERVED_SOURCES = frozenset({"signup", "backfill", "role_change", "renewal", "rollover",
                              "refund", "expiry", "opening_balance"})
# The lots an allowance period is made of (they expire with it).
ALLOWANCE_SOURCES = frozenset({"signup", "backfill", "role_change", "renewal", "rollover"})

KeyId = tuple[str, str, str]
"""(owner_user_id, operation, idempotency_key)."""

LedgerRow = tuple[int, str, str, str | None, str | None, int | None, int | None]
"""(amount, type, source, actor_user_id, idempotency_key, refund_of, lot_id) of one log row."""


def known_role(role: str | None) -> str:
    """The role_credits row that applies: the role's own, else the member row."""
    return role if role is not None and role in ALLOCATION else FALLBACK_ROLE


def allocation(role: str | None) -> int:
    """Credits a role is allocated (NULL and unknown roles: the member allocation)."""
    return ALLOCATION[known_role(role)]


def team_limit(role: str | None) -> int:
    """How many team members a role allows (NULL and unknown roles: the member's, 0)."""
    return TEAM_LIMIT.get(known_role(role), 0)


def quote_role(role: str | None) -> str:
    """The role as coalesce(quote_literal(role), 'NULL') prints it."""
    return "NULL" if role is None else "'" + role.replace("'", "''") + "'"


def role_key(role: str | None) -> str:
    """The key of a role in the reports' by_role objects."""
    return "(null)" if role is None else role


DEFAULT_PRIORITY = 50
NEVER = float("inf")


class ModelError(Exception):
    """The call must fail with this SQLSTATE (and change nothing)."""

    def __init__(self, sqlstate: str, reason: str) -> None:
        super().__init__(f"{sqlstate}: {reason}")
        self.sqlstate = sqlstate


@dataclass(eq=False)
class Lot:
    """One row of credit_lots: the credits one entry gave an account."""

    user_id: str
    life: int
    seq: int  # creation order, which the ids follow except among one statement's lots
    batch: int  # the statement that created it (see Ledger.statement)
    amount: int
    source: str
    expires: int | None = None  # an hour of the clock, or never
    priority: int = DEFAULT_PRIORITY
    entry: Entry | None = None
    taken: int = 0
    expired: int = 0
    expired_unspent: int = 0  # of expired: what it still held when a sweep or renewal expired it
    lot_id: int | None = None

    @property
    def tracked(self) -> bool:
        """An expiry or a priority other than the default: the lot keeps its own count."""
        return self.expires is not None or self.priority != DEFAULT_PRIORITY

    @property
    def holding(self) -> int:
        """What is left of a tracked lot (lapsed or not)."""
        return self.amount - self.taken - self.expired

    def lapsed(self, clock: int) -> bool:
        """Past its expiry at ``clock`` (from that hour on)."""
        return self.expires is not None and self.expires <= clock

    def order(self) -> tuple[int, float, int]:
        """The spending order: priority, soonest expiry (none last), oldest."""
        return (self.priority, NEVER if self.expires is None else self.expires, self.seq)


@dataclass(eq=False)
class Entry:
    """One row of credit_usage_log as the model expects it."""

    user_id: str
    life: int
    amount: int
    source: str
    actor: str | None = None
    key: str | None = None
    refund_of: int | None = None
    remaining_after: int = 0
    log_id: int | None = None
    refunded: bool = False
    kind: str | None = None  # 'expire', else by the sign of the amount
    lot: Lot | None = None  # the lot an expire entry expired, or a credit created
    takes: list[tuple[Lot, int]] = field(default_factory=list)  # a debit's, of tracked lots

    @property
    def type(self) -> str:
        """'credit', 'debit' or 'expire'."""
        if self.kind is not None:
            return self.kind
        return "credit" if self.amount > 0 else "debit"

    def row(self) -> LedgerRow:
        """The columns the test compares with the database's row."""
        lot_id = self.lot.lot_id if self.lot is not None and self.type == "expire" else None
        return (self.amount, self.type, self.source, self.actor, self.key, self.refund_of,
                lot_id)


@dataclass
class Account:
    """One life of a user's balance row."""

    life: int
    total: int
    used: int = 0
    allocated: int = 0
    lots: list[Lot] = field(default_factory=list)
    opened: int = 0  # the hour the account opened: its periods' anchor
    period_ends: int | None = None  # period_ends_at, an hour
    allowance: int | None = None  # period_allowance

    @property
    def remaining(self) -> int:
        """total - used, as the generated column (used counts expiries too)."""
        return self.total - self.used

    @property
    def tracked(self) -> int:
        """tracked_credits: what the tracked lots hold, lapsed ones included."""
        return sum(lot.holding for lot in self.lots if lot.tracked)

    @property
    def untracked(self) -> int:
        """The untracked pool: remaining less what the tracked lots hold."""
        return self.remaining - self.tracked

    def lapsed_credits(self, clock: int) -> int:
        """What the lapsed lots still hold (no sweep has expired it yet)."""
        return sum(lot.holding for lot in self.lots if lot.tracked and lot.lapsed(clock))

    def spendable(self, clock: int) -> int:
        """What one debit could take now: remaining less the lapsed lots' credits."""
        return self.remaining - self.lapsed_credits(clock)

    def open_lots(self, clock: int) -> list[tuple[Lot | None, int]]:
        """The spendable lots in spending order, the untracked pool (None) among them."""
        lots: list[tuple[tuple[int, float, float], Lot | None, int]] = [
            (lot.order(), lot, lot.holding) for lot in self.lots
            if lot.tracked and lot.holding > 0 and not lot.lapsed(clock)]
        if self.untracked > 0:
            lots.append(((DEFAULT_PRIORITY, NEVER, NEVER), None, self.untracked))
        return [(lot, available) for _, lot, available in sorted(lots, key=lambda t: t[0])]

    def next_expiry(self, clock: int) -> dict[str, int] | None:
        """{expires_at, credits} of the soonest open lot still holding credits."""
        upcoming = [lot for lot in self.lots if lot.tracked and lot.holding > 0
                    and lot.expires is not None and not lot.lapsed(clock)]
        if not upcoming:
            return None
        soonest = min(lot.expires for lot in upcoming if lot.expires is not None)
        return {"expires_at": soonest,
                "credits": sum(lot.holding for lot in upcoming if lot.expires == soonest)}

    def row(self) -> tuple[int, int, int, int, int]:
        """(total_credits, used_credits, remaining_credits, allocated_credits, tracked_credits)."""
        return (self.total, self.used, self.remaining, self.allocated, self.tracked)

    def period_row(self) -> tuple[int, int | None, int | None]:
        """(created_at, period_ends_at, period_allowance), times as hours."""
        return (self.opened, self.period_ends, self.allowance)


@dataclass
class RoleRow:
    """One row of role_credits."""

    credits: int
    team_member_limit: int = 0
    interval: int | None = None  # renewal_interval in hours; None: one-time
    rollover_cap: int = 0


def period_at(anchor: int, interval: int, at: int) -> tuple[int, int]:
    """allowance_period(): [start, end) of the period containing ``at`` (an hour, or
    any time within that hour: the interval is whole hours)."""
    k = max((at - anchor) // interval, 0)
    return anchor + k * interval, anchor + (k + 1) * interval


@dataclass
class User:
    """A users row (or a deleted one, kept so its id can be reused)."""

    role: str | None
    alive: bool = True


@dataclass(frozen=True)
class Outcome:
    """What debit_credits, grant_credits or refund_credits must return."""

    entry: Entry
    replayed: bool

    def expected(self) -> dict[str, Any]:
        """The jsonb result, log_id None while the entry's id is not known yet."""
        return {
            "log_id": self.entry.log_id,
            "account_user_id": self.entry.user_id,
            "actor_user_id": self.entry.actor,
            "amount": abs(self.entry.amount),
            "remaining_credits": self.entry.remaining_after,
            "from_team_pool": self.entry.actor is not None,
            "replayed": self.replayed,
        }


@dataclass
class Ledger:
    """Users, accounts, the log, team pools and idempotency keys of one example."""

    users: dict[str, User] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    lives: Counter[str] = field(default_factory=Counter)
    log: dict[str, list[Entry]] = field(default_factory=dict)
    teams: dict[str, str] = field(default_factory=dict)  # member -> admin
    seats: dict[str, int] = field(default_factory=dict)  # member -> seat in the pool
    keys: dict[KeyId, Entry] = field(default_factory=dict)
    clock: int = 0
    lot_seq: int = 0
    # The statements that wrote lots, counted: lots of one statement (a bulk signup,
    # a backfill, a renewal) may get their ids in an order the model does not know.
    statement: int = 0
    roles: dict[str, RoleRow] = field(default_factory=lambda: {
        role: RoleRow(credits, TEAM_LIMIT.get(role, 0)) for role, credits in ALLOCATION.items()})

    # ------------------------------------------------------------------- roles

    def role_row(self, role: str | None) -> RoleRow:
        """The role_credits row that applies: the role's own, else the member row."""
        return self.roles[role if role is not None and role in self.roles else FALLBACK_ROLE]

    def is_fallback(self, role: str | None) -> bool:
        """Whether the role has no row of its own (NULL or unknown)."""
        return role is None or role not in self.roles

    def renewing_role(self, user_id: str) -> RoleRow | None:
        """The row that renews an account (its user's role), if that role renews."""
        row = self.role_row(self.users[user_id].role)
        return row if row.interval is not None else None

    # ------------------------------------------------------------------ queries

    def alive(self, user_id: str) -> bool:
        """Whether a users row with this id exists."""
        user = self.users.get(user_id)
        return user is not None and user.alive

    def alive_in_order(self) -> list[str]:
        """Existing users in the order their ids were first used."""
        return [u for u in self.users if self.alive(u)]

    def alive_ids(self) -> list[str]:
        """Existing users in primary-key order (uuid order is byte order)."""
        return sorted((u for u in self.users if self.alive(u)), key=uuid.UUID)

    def entries(self) -> Iterable[Entry]:
        """Every log entry of the example, all lives."""
        for rows in self.log.values():
            yield from rows

    def entry(self, log_id: int) -> Entry | None:
        """The entry with this log id, if the example wrote it."""
        return next((e for e in self.entries() if e.log_id == log_id), None)

    def account_ended(self, entry: Entry) -> bool:
        """Whether the account an entry was written to has ended (deleted, maybe re-created)."""
        account = self.accounts.get(entry.user_id)
        return account is None or account.life != entry.life

    def members_of(self, admin: str) -> list[str]:
        """The members of an admin's pool."""
        return [m for m, a in self.teams.items() if a == admin]

    def lots(self) -> Iterable[Lot]:
        """Every lot of the accounts that exist (a lot ends with its account)."""
        for account in self.accounts.values():
            yield from account.lots

    # ---------------------------------------------------------------- internals

    def _append(self, entry: Entry) -> Entry:
        self.log.setdefault(entry.user_id, []).append(entry)
        return entry

    def _lot(self, account: Account, entry: Entry, expires: int | None = None,
             priority: int = DEFAULT_PRIORITY) -> None:
        """The lot a credit entry creates."""
        self.lot_seq += 1
        lot = Lot(entry.user_id, account.life, self.lot_seq, self.statement, entry.amount,
                  entry.source, expires, priority, entry)
        account.lots.append(lot)
        entry.lot = lot

    def _open(self, user_id: str, source: str) -> Account:
        """A new account (a new life) with its role's allocation, logged and a lot if
        not 0; in a renewing role, its first period starts now and the lot expires
        with it."""
        row = self.role_row(self.users[user_id].role)
        credits = row.credits
        self.lives[user_id] += 1
        account = Account(self.lives[user_id], total=credits, allocated=credits,
                          opened=self.clock)
        if row.interval is not None:
            account.period_ends = self.clock + row.interval
            account.allowance = credits
        self.accounts[user_id] = account
        if credits > 0:
            entry = self._append(Entry(user_id, account.life, credits, source,
                                       remaining_after=credits))
            self._lot(account, entry, account.period_ends)
        return account

    def _can_pay(self, account: Account | None, amount: int) -> bool:
        return account is not None and account.spendable(self.clock) >= amount

    def _spend(self, account_of: str, actor: str | None, amount: int, source: str,
               key: str | None, owner: str) -> Outcome:
        account = self.accounts[account_of]
        takes: list[tuple[Lot, int]] = []
        left = amount
        for lot, available in account.open_lots(self.clock):
            take = min(available, left)
            if lot is not None:
                lot.taken += take
                takes.append((lot, take))
            left -= take
            if left == 0:
                break
        assert left == 0
        account.used += amount
        entry = self._append(Entry(account_of, account.life, -amount, source, actor=actor,
                                   key=key, remaining_after=account.remaining, takes=takes))
        if key is not None:
            self.keys[(owner, "debit", key)] = entry
        return Outcome(entry, replayed=False)

    def _expire(self, account: Account, lot: Lot, credits: int, actor: str | None,
                *, unspent: bool = False) -> None:
        """An 'expire' entry: ``credits`` of ``lot`` expire (``unspent``: credits it
        held at its expiry, as a sweep or a renewal expires, not refunded onto it since)."""
        lot.expired += credits
        if unspent:
            lot.expired_unspent += credits
        account.used += credits
        self._append(Entry(lot.user_id, account.life, -credits, "expiry", actor=actor,
                           kind="expire", lot=lot, remaining_after=account.remaining))

    # ------------------------------------------------------------------- users

    def signup(self, user_id: str, role: str | None, *, with_credits: bool = True,
               same_statement: bool = False) -> None:
        """INSERT INTO users (a new or a deleted id); the trigger allocates unless disabled.
        ``same_statement``: in the statement of the signup before (a bulk signup)."""
        assert not self.alive(user_id)
        if not same_statement:
            self.statement += 1
        self.users[user_id] = User(role)
        if with_credits:
            self._open(user_id, "signup")

    def delete(self, user_id: str) -> None:
        """DELETE FROM users: the account, the memberships and the keys go; the log stays."""
        if not self.alive(user_id):
            return
        self.users[user_id].alive = False
        self.accounts.pop(user_id, None)
        self.teams = {m: a for m, a in self.teams.items() if user_id not in (m, a)}
        self.seats = {m: seat for m, seat in self.seats.items() if m in self.teams}
        self.keys = {k: e for k, e in self.keys.items() if k[0] != user_id}

    def change_role(self, user_id: str, role: str | None) -> None:
        """UPDATE users SET role: top up to the new allocation, or open the account.

        A renewing role's entitlement is per period: the live period's allowance is
        raised to the new role's (a lot expiring with it), never lowered; an account
        without a period enters its current one holding its one-time allocation; one
        whose period ended waits for its renewal (nothing now)."""
        if not self.alive(user_id) or self.users[user_id].role == role:
            return
        self.users[user_id].role = role
        self.statement += 1
        row = self.role_row(role)
        account = self.accounts.get(user_id)
        if account is None:
            self._open(user_id, "backfill")
            return
        ends: int | None
        if row.interval is None:
            have, ends = account.allocated, None
        elif account.period_ends is None:
            have = account.allocated
            ends = period_at(account.opened, row.interval, self.clock)[1]
        elif account.period_ends > self.clock:
            assert account.allowance is not None
            have, ends = account.allowance, account.period_ends
        else:
            return
        topup = max(row.credits - have, 0)
        if ends is not None:
            account.period_ends, account.allowance = ends, have + topup
        if topup > 0:
            account.total += topup
            account.allocated += topup
            entry = self._append(Entry(user_id, account.life, topup, "role_change",
                                       remaining_after=account.remaining))
            self._lot(account, entry, ends)

    # ---------------------------------------------------------------- spending

    def debit(self, user_id: str, amount: int, source: str, key: str | None) -> Outcome:
        """debit_credits: replay, own account, team pool, or CR001/CR005/CR006/CR007."""
        if amount <= 0:
            raise ModelError("CR006", f"amount {amount}")
        if key is not None and (earlier := self.keys.get((user_id, "debit", key))):
            if earlier.amount != -amount or earlier.source != source:
                raise ModelError("CR007", f"debit key {key} was used with other parameters")
            return Outcome(earlier, replayed=True)
        if self._can_pay(self.accounts.get(user_id), amount):
            return self._spend(user_id, None, amount, source, key, user_id)
        admin = self.teams.get(user_id)
        if admin is not None and self._can_pay(self.accounts.get(admin), amount):
            return self._spend(admin, user_id, amount, source, key, user_id)
        if not self.alive(user_id):
            raise ModelError("CR005", "unknown user")
        raise ModelError("CR001", "insufficient credits")

    def grant(self, user_id: str, amount: int, source: str, key: str | None,
              expires: int | None = None, priority: int | None = None) -> Outcome:
        """grant_credits: replay, or open the account if missing, then add a lot to it
        (expiring at the hour ``expires``, spent by ``priority``, None: 50)."""
        if amount <= 0:
            raise ModelError("CR006", f"amount {amount}")
        if source in RESERVED_SOURCES:
            raise ModelError("22023", f"source {source} is reserved")
        if priority is not None and not 0 <= priority <= 100:
            raise ModelError("22023", f"priority {priority}")
        wanted = DEFAULT_PRIORITY if priority is None else priority
        if key is not None and (earlier := self.keys.get((user_id, "grant", key))):
            lot = earlier.lot
            if (earlier.amount != amount or earlier.source != source
                    or (None if lot is None else lot.expires) != expires
                    or (DEFAULT_PRIORITY if lot is None else lot.priority) != wanted):
                raise ModelError("CR007", f"grant key {key} was used with other parameters")
            return Outcome(earlier, replayed=True)
        if expires is not None and expires <= self.clock:
            raise ModelError("22023", f"expiry {expires} is not after {self.clock}")
        if not self.alive(user_id):
            raise ModelError("CR005", "unknown user")
        self.statement += 1
        account = self.accounts.get(user_id)
        if account is None:
            account = self._open(user_id, "backfill")
        account.total += amount
        entry = self._append(Entry(user_id, account.life, amount, source, key=key,
                                   remaining_after=account.remaining))
        self._lot(account, entry, expires, wanted)
        if key is not None:
            self.keys[(user_id, "grant", key)] = entry
        return Outcome(entry, replayed=False)

    def refund(self, log_id: int) -> Outcome:
        """refund_credits: a credit on the debit's account, if that account still lives."""
        debit = self.entry(log_id)
        if debit is None or debit.type != "debit":
            raise ModelError("CR008", f"entry {log_id} is not a debit")
        account = self.accounts.get(debit.user_id)
        if account is None or account.life != debit.life:
            raise ModelError("CR005", f"the account of entry {log_id} no longer exists")
        if debit.refunded:
            raise ModelError("CR008", f"entry {log_id} was refunded already")
        debit.refunded = True
        account.total -= debit.amount
        # Back to the lots the debit took from; what goes back to a lapsed lot
        # expires at once, an 'expire' entry per lot after the refund's.
        lapsed = sorted(((lot, take) for lot, take in debit.takes if lot.lapsed(self.clock)),
                        key=lambda t: t[0].seq)
        for lot, take in debit.takes:
            lot.taken -= take
        entry = self._append(Entry(debit.user_id, account.life, -debit.amount, "refund",
                                   actor=debit.actor, refund_of=log_id,
                                   remaining_after=account.remaining
                                   - sum(take for _, take in lapsed)))
        for lot, take in lapsed:
            self._expire(account, lot, take, debit.actor)
        return Outcome(entry, replayed=False)

    # ------------------------------------------------------------------- time

    def pass_time(self, hours: int) -> None:
        """The clock moves on: lots whose expiry it reaches lapse."""
        assert hours > 0
        self.clock += hours

    def _due_lots(self, as_of: int | None) -> list[Lot]:
        """The lots the sweep as of ``as_of`` (None: now) expires, in its order:
        soonest expiry, then lot id, which is the model's creation order except among
        the lots of one statement."""
        when = self.clock if as_of is None else as_of
        return sorted((lot for lot in self.lots()
                       if lot.tracked and lot.holding > 0 and lot.lapsed(when)),
                      key=lambda lot: (lot.expires, lot.seq))

    def expire_limit(self, as_of: int | None, limit: int | None) -> int | None:
        """``limit``, made larger if it would stop the sweep within lots of one expiry
        written by one statement (a bulk signup's, a backfill's or a renewal's
        allowances), which the database orders by ids the model cannot predict: the
        sweep then takes them all, and which lots it expires never depends on the
        database's choice. Below 1 it stays (22023)."""
        due = self._due_lots(as_of)
        if limit is None or limit < 1:
            return limit
        while (limit < len(due) and due[limit - 1].expires == due[limit].expires
               and due[limit - 1].batch == due[limit].batch):
            limit += 1
        return limit

    def expire(self, as_of: int | None, limit: int | None) -> dict[str, Any]:
        """expire_credits(p_as_of, p_limit): the lots lapsed by ``as_of`` (None: now)
        that still hold credits, soonest expiry (then oldest) first, ``limit`` of them
        (None: all), each an 'expire' entry for what it holds. No account is busy: none
        is skipped. The report's as_of is the hour asked (None for now)."""
        if limit is not None and limit < 1:
            raise ModelError("22023", f"p_limit {limit}")
        due = self._due_lots(as_of)
        assert limit is None or limit == self.expire_limit(as_of, limit), "widen it first"
        due = due[:limit]
        credits = [lot.holding for lot in due]
        for lot, held in zip(due, credits, strict=True):
            self._expire(self.accounts[lot.user_id], lot, held, None, unspent=True)
        return {"lots_expired": len(due), "credits_expired": sum(credits),
                "accounts": len({lot.user_id for lot in due}), "accounts_skipped": 0,
                "as_of": as_of}

    # ---------------------------------------------------------------- renewal

    def next_renewal(self, user_id: str) -> dict[str, Any] | None:
        """get_credit_balance's next_renewal of an account: when its period ends and
        what its role then gives, while the role renews."""
        account = self.accounts[user_id]
        row = self.role_row(self.users[user_id].role)
        if row.interval is None or account.period_ends is None:
            return None
        return {"renews_at": account.period_ends, "credits": row.credits,
                "rollover_cap": row.rollover_cap}

    def renew(self, as_of: int | None, limit: int | None) -> dict[str, Any]:
        """renew_allowances(p_as_of, p_limit): the accounts whose period ended by
        ``as_of`` (None: now) and whose role renews, the longest overdue (then by id)
        first, ``limit`` of them. Their ended allowance lots' credits expire (an entry
        per lot), then each gets its role's credits for the period containing as_of
        and the rollover, least(rollover_cap, what the ended allowance had unspent at
        its end), if the new period starts where the ended one ended. No account is
        busy: none is skipped."""
        if limit is not None and limit < 1:
            raise ModelError("22023", f"p_limit {limit}")
        self.statement += 1
        when = self.clock if as_of is None else as_of
        due = sorted((a.period_ends, uuid.UUID(u), u) for u, a in self.accounts.items()
                     if a.period_ends is not None and a.period_ends <= when
                     and self.renewing_role(u) is not None)
        chosen = [u for _, _, u in due][:limit]
        expired = 0
        for user_id in chosen:
            account = self.accounts[user_id]
            for lot in sorted((x for x in account.lots if x.expires == account.period_ends
                               and x.source in ALLOWANCE_SOURCES and x.holding > 0),
                              key=lambda x: x.seq):
                expired += lot.holding
                self._expire(account, lot, lot.holding, None, unspent=True)
        renewed = rolled = 0
        for user_id in chosen:
            account = self.accounts[user_id]
            row = self.renewing_role(user_id)
            assert row is not None and row.interval is not None
            ended = account.period_ends
            assert ended is not None
            starts, ends = period_at(account.opened, row.interval, when)
            unspent = sum(x.amount - x.taken - x.expired + x.expired_unspent
                          for x in account.lots
                          if x.expires == ended and x.source in ALLOWANCE_SOURCES)
            rollover = min(row.rollover_cap, unspent) if ended >= starts else 0
            account.period_ends, account.allowance = ends, row.credits
            for amount, source in ((row.credits, "renewal"), (rollover, "rollover")):
                if amount > 0:
                    account.total += amount
                    entry = self._append(Entry(user_id, account.life, amount, source,
                                               remaining_after=account.remaining))
                    self._lot(account, entry, ends)
            renewed += row.credits
            rolled += rollover
        return {"accounts_renewed": len(chosen), "credits_renewed": renewed,
                "credits_rolled_over": rolled, "credits_expired": expired,
                "accounts_skipped": 0, "as_of": as_of}

    def _schedule(self, role: str) -> None:
        """The role started renewing: each of its accounts without a period enters the
        current one (from its opening), its allowance what it holds (its one-time
        allocation)."""
        interval = self.roles[role].interval
        assert interval is not None
        for user_id, account in self.accounts.items():
            if self.role_row(self.users[user_id].role) is not self.roles[role]:
                continue
            if account.period_ends is None:
                account.period_ends = period_at(account.opened, interval, self.clock)[1]
                if account.allowance is None:
                    account.allowance = account.allocated

    def set_renewal(self, role: str, interval: int | None, cap: int) -> None:
        """UPDATE role_credits SET renewal_interval, rollover_cap of an existing role:
        from none to an interval, its accounts are scheduled; otherwise the periods
        stay as they are (the next renewal follows the new interval, none if NULL)."""
        row = self.roles[role]
        started = row.interval is None and interval is not None
        row.interval, row.rollover_cap = interval, cap
        if started:
            self._schedule(role)

    def add_role(self, role: str, credits: int, interval: int | None, cap: int) -> None:
        """INSERT INTO role_credits a role not there yet: its users (on the member
        fallback until now) have it from now on; with an interval, their accounts are
        scheduled."""
        assert role not in self.roles
        self.roles[role] = RoleRow(credits, 0, interval, cap)
        if interval is not None:
            self._schedule(role)

    def credit_lots(self, user_id: str) -> list[dict[str, Any]]:
        """get_credit_lots: the account's lots in spending order (created_at aside).

        An untracked lot's remainder is derived: the untracked pool fills the
        newest untracked lots, as oldest-first spending leaves them."""
        if not self.alive(user_id):
            raise ModelError("CR005", "unknown user")
        account = self.accounts.get(user_id)
        if account is None:
            return []
        left = account.untracked
        untracked_remaining: dict[int, int] = {}
        for lot in sorted((x for x in account.lots if not x.tracked), key=lambda x: -x.seq):
            untracked_remaining[lot.seq] = min(lot.amount, max(left, 0))
            left -= lot.amount
        rows = []
        for lot in sorted(account.lots, key=lambda x: x.order()):
            remaining = lot.holding if lot.tracked else untracked_remaining[lot.seq]
            if remaining == 0:
                state = "expired" if lot.expired > 0 else "spent"
            else:
                state = "lapsed" if lot.lapsed(self.clock) else "open"
            rows.append({
                "lot_id": lot.lot_id, "source": lot.source,
                "log_id": None if lot.entry is None else lot.entry.log_id,
                "amount": lot.amount, "remaining": remaining,
                "taken": lot.taken if lot.tracked else lot.amount - remaining,
                "expired": lot.expired, "expires_at": lot.expires, "priority": lot.priority,
                "state": state})
        return rows

    # ------------------------------------------------------------------- teams

    def add_member(self, admin: str, member: str) -> None:
        """add_team_member, its checks in the SQL's order; the member takes the lowest free
        seat of the pool (1 to the role's team_member_limit)."""
        if admin == member:
            raise ModelError("CR009", "self")
        if not self.alive(admin):
            raise ModelError("CR005", "unknown admin")
        if not self.alive(member):
            raise ModelError("CR005", "unknown member")
        limit = team_limit(self.users[admin].role)
        if limit <= 0:
            raise ModelError("CR003", "not a team admin")
        current = self.teams.get(member)
        if current == admin:
            return
        if current is not None:
            raise ModelError("CR004", "in another team")
        members = self.members_of(admin)
        free = sorted(set(range(1, limit + 1)) - {self.seats[m] for m in members})
        if len(members) >= limit or not free:
            raise ModelError("CR002", "team full")
        self.teams[member] = admin
        self.seats[member] = free[0]

    def remove_member(self, admin: str, member: str) -> bool:
        """remove_team_member: true if the pair was a membership."""
        if self.teams.get(member) != admin:
            return False
        del self.teams[member]
        del self.seats[member]
        return True

    # ----------------------------------------------------------------- reports

    def balance(self, user_id: str) -> dict[str, Any]:
        """get_credit_balance."""
        if not self.alive(user_id):
            raise ModelError("CR005", "unknown user")
        own = self.accounts.get(user_id)
        admin = self.teams.get(user_id)
        pool = None if admin is None else self.accounts.get(admin)
        choices = [a.spendable(self.clock) for a in (own, pool) if a is not None]
        return {
            "user_id": user_id,
            "own": None if own is None else {"total_credits": own.total,
                                             "used_credits": own.used,
                                             "remaining_credits": own.remaining,
                                             "spendable_credits": own.spendable(self.clock),
                                             "next_expiry": own.next_expiry(self.clock),
                                             "next_renewal": self.next_renewal(user_id)},
            "team_admin_id": admin,
            "team_pool_remaining": None if pool is None else pool.remaining,
            "team_pool_spendable": None if pool is None else pool.spendable(self.clock),
            "team_pool_next_expiry": None if pool is None else pool.next_expiry(self.clock),
            "team_pool_next_renewal": None if pool is None or admin is None
            else self.next_renewal(admin),
            "spendable": max(choices, default=0),
        }

    def _allocate(self, user_ids: list[str], *, dry_run: bool) -> dict[str, Any]:
        """Open the accounts of these users by role (unless dry_run), in one statement;
        the report's common part."""
        self.statement += 1
        by_role: dict[str, dict[str, int]] = {}
        fallback = 0
        for user_id in user_ids:
            role = self.users[user_id].role
            credits = self.role_row(role).credits
            row = by_role.setdefault(role_key(role), {"users": 0, "credits": 0})
            row["users"] += 1
            row["credits"] += credits
            fallback += self.is_fallback(role)
            if not dry_run:
                self._open(user_id, "backfill")
        return {
            "users_backfilled": len(user_ids),
            "credits_allocated": sum(r["credits"] for r in by_role.values()),
            "fallback_role_users": fallback,
            "by_role": by_role,
            "users_skipped": 0,
            "dry_run": dry_run,
        }

    def backfill(self, *, dry_run: bool = False) -> dict[str, Any]:
        """backfill_user_credits(p_dry_run): every user without a balance row."""
        alive = self.alive_ids()
        waiting = [u for u in alive if u not in self.accounts]
        report = self._allocate(waiting, dry_run=dry_run)
        return report | {"users_total": len(alive), "users_without_credits": len(waiting)}

    def backfill_batch(self, after: str | None, limit: int) -> dict[str, Any]:
        """backfill_user_credits_batch(after, limit): the next window of users by id."""
        alive = self.alive_ids()
        if after is not None:
            alive = [u for u in alive if uuid.UUID(u) > uuid.UUID(after)]
        window = alive[:limit]
        report = self._allocate([u for u in window if u not in self.accounts], dry_run=False)
        return report | {"users_scanned": len(window),
                         "last_user_id": window[-1] if window else None}

    def allocation_report(self) -> dict[str, Any]:
        """credit_allocation_report()."""
        by_role: dict[str, dict[str, int]] = {}
        for user_id in self.alive_ids():
            account = self.accounts.get(user_id)
            row = by_role.setdefault(role_key(self.users[user_id].role),
                                     {"users": 0, "users_with_credits": 0,
                                      "total_credits": 0, "remaining_credits": 0})
            row["users"] += 1
            if account is not None:
                row["users_with_credits"] += 1
                row["total_credits"] += account.total
                row["remaining_credits"] += account.remaining
        with_credits = sum(r["users_with_credits"] for r in by_role.values())
        total = sum(r["users"] for r in by_role.values())
        # No operation of the machine makes a signup allocation fail (the SQL tests of
        # credit_allocation_failures do): none is ever recorded.
        return {"users_total": total, "users_with_credits": with_credits,
                "users_without_credits": total - with_credits, "allocation_failures": 0,
                "by_role": by_role}

    def integrity_problems(self) -> set[tuple[str, str]]:
        """The rows verify_credit_integrity() must return: only team problems.

        A team admin demoted to a role without a team keeps their members (the role
        change does not touch pools); the check reports each such member.
        """
        problems = set()
        for admin in set(self.teams.values()):
            role = self.users[admin].role
            limit = team_limit(role)
            members = self.members_of(admin)
            if limit == 0:
                problems |= {(m, f"member of the team of {admin}, whose role "
                                 f"{quote_role(role)} allows no team") for m in members}
            elif len(members) > limit:
                problems.add((admin, f"team pool has {len(members)} members; role "
                                     f"{quote_role(role)} allows {limit}"))
        return problems
