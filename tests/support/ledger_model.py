"""A small Python model of the ledger's rules, for the state machine test (no tests here).

It knows no SQL. Each operation returns what the database must answer, or raises
:class:`ModelError` with the SQLSTATE the database must raise, and then has changed
nothing. The rules are those of sql/007, 008, 013..020 and the issue 13 design:

- an account is one life of a user id: deleting the user ends it, a re-created id
  opens a new one (the old entries stay in the log, and count for nothing);
- ``allocated`` is the largest role allocation the account was given: a role change
  tops the account up to the new role's allocation, never lowers it;
- idempotency keys belong to the caller: (spender, 'debit', key) or
  (account, 'grant', key); they die with their owner.

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
RESERVED_SOURCES = frozenset({"signup", "backfill", "role_change", "refund"})

KeyId = tuple[str, str, str]
"""(owner_user_id, operation, idempotency_key)."""

LedgerRow = tuple[int, str, str, str | None, str | None, int | None]
"""(amount, type, source, actor_user_id, idempotency_key, refund_of) of one log row."""


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


class ModelError(Exception):
    """The call must fail with this SQLSTATE (and change nothing)."""

    def __init__(self, sqlstate: str, reason: str) -> None:
        super().__init__(f"{sqlstate}: {reason}")
        self.sqlstate = sqlstate


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

    @property
    def type(self) -> str:
        """'credit' or 'debit', by the sign of the amount."""
        return "credit" if self.amount > 0 else "debit"

    def row(self) -> LedgerRow:
        """The columns the test compares with the database's row."""
        return (self.amount, self.type, self.source, self.actor, self.key, self.refund_of)


@dataclass
class Account:
    """One life of a user's balance row."""

    life: int
    total: int
    used: int = 0
    allocated: int = 0

    @property
    def remaining(self) -> int:
        """total - used, as the generated column."""
        return self.total - self.used

    def row(self) -> tuple[int, int, int, int]:
        """(total_credits, used_credits, remaining_credits, allocated_credits)."""
        return (self.total, self.used, self.remaining, self.allocated)


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

    # ---------------------------------------------------------------- internals

    def _append(self, entry: Entry) -> Entry:
        self.log.setdefault(entry.user_id, []).append(entry)
        return entry

    def _open(self, user_id: str, credits: int, source: str) -> Account:
        """A new account (a new life) with its allocation, logged if not 0."""
        self.lives[user_id] += 1
        account = Account(self.lives[user_id], total=credits, allocated=credits)
        self.accounts[user_id] = account
        if credits > 0:
            self._append(Entry(user_id, account.life, credits, source, remaining_after=credits))
        return account

    def _spend(self, account_of: str, actor: str | None, amount: int, source: str,
               key: str | None, owner: str) -> Outcome:
        account = self.accounts[account_of]
        account.used += amount
        entry = self._append(Entry(account_of, account.life, -amount, source, actor=actor,
                                   key=key, remaining_after=account.remaining))
        if key is not None:
            self.keys[(owner, "debit", key)] = entry
        return Outcome(entry, replayed=False)

    # ------------------------------------------------------------------- users

    def signup(self, user_id: str, role: str | None, *, with_credits: bool = True) -> None:
        """INSERT INTO users (a new or a deleted id); the trigger allocates unless disabled."""
        assert not self.alive(user_id)
        self.users[user_id] = User(role)
        if with_credits:
            self._open(user_id, allocation(role), "signup")

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
        """UPDATE users SET role: top up to the new allocation, or open the account."""
        if not self.alive(user_id) or self.users[user_id].role == role:
            return
        self.users[user_id].role = role
        credits = allocation(role)
        account = self.accounts.get(user_id)
        if account is None:
            self._open(user_id, credits, "backfill")
        elif credits > account.allocated:
            topup = credits - account.allocated
            account.total += topup
            account.allocated += topup
            self._append(Entry(user_id, account.life, topup, "role_change",
                               remaining_after=account.remaining))

    # ---------------------------------------------------------------- spending

    def debit(self, user_id: str, amount: int, source: str, key: str | None) -> Outcome:
        """debit_credits: replay, own account, team pool, or CR001/CR005/CR006/CR007."""
        if amount <= 0:
            raise ModelError("CR006", f"amount {amount}")
        if key is not None and (earlier := self.keys.get((user_id, "debit", key))):
            if earlier.amount != -amount or earlier.source != source:
                raise ModelError("CR007", f"debit key {key} was used with other parameters")
            return Outcome(earlier, replayed=True)
        own = self.accounts.get(user_id)
        if own is not None and own.remaining >= amount:
            return self._spend(user_id, None, amount, source, key, user_id)
        admin = self.teams.get(user_id)
        pool = None if admin is None else self.accounts.get(admin)
        if admin is not None and pool is not None and pool.remaining >= amount:
            return self._spend(admin, user_id, amount, source, key, user_id)
        if not self.alive(user_id):
            raise ModelError("CR005", "unknown user")
        raise ModelError("CR001", "insufficient credits")

    def grant(self, user_id: str, amount: int, source: str, key: str | None) -> Outcome:
        """grant_credits: replay, or open the account if missing, then add to its total."""
        if amount <= 0:
            raise ModelError("CR006", f"amount {amount}")
        if source in RESERVED_SOURCES:
            raise ModelError("22023", f"source {source} is reserved")
        if key is not None and (earlier := self.keys.get((user_id, "grant", key))):
            if earlier.amount != amount or earlier.source != source:
                raise ModelError("CR007", f"grant key {key} was used with other parameters")
            return Outcome(earlier, replayed=True)
        if not self.alive(user_id):
            raise ModelError("CR005", "unknown user")
        account = self.accounts.get(user_id)
        if account is None:
            account = self._open(user_id, allocation(self.users[user_id].role), "backfill")
        account.total += amount
        entry = self._append(Entry(user_id, account.life, amount, source, key=key,
                                   remaining_after=account.remaining))
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
        entry = self._append(Entry(debit.user_id, account.life, -debit.amount, "refund",
                                   actor=debit.actor, refund_of=log_id,
                                   remaining_after=account.remaining))
        return Outcome(entry, replayed=False)

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
        choices = [a.remaining for a in (own, pool) if a is not None]
        return {
            "user_id": user_id,
            "own": None if own is None else {"total_credits": own.total,
                                             "used_credits": own.used,
                                             "remaining_credits": own.remaining,
                                             "spendable_credits": own.remaining,
                                             "next_expiry": None,
                                             "next_renewal": None},
            "team_admin_id": admin,
            "team_pool_remaining": None if pool is None else pool.remaining,
            "team_pool_spendable": None if pool is None else pool.remaining,
            "team_pool_next_expiry": None,
            "team_pool_next_renewal": None,
            "spendable": max(choices, default=0),
        }

    def _allocate(self, user_ids: list[str], *, dry_run: bool) -> dict[str, Any]:
        """Open the accounts of these users by role (unless dry_run); the report's common part."""
        by_role: dict[str, dict[str, int]] = {}
        fallback = 0
        for user_id in user_ids:
            role = self.users[user_id].role
            credits = allocation(role)
            row = by_role.setdefault(role_key(role), {"users": 0, "credits": 0})
            row["users"] += 1
            row["credits"] += credits
            fallback += known_role(role) != role
            if not dry_run:
                self._open(user_id, credits, "backfill")
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
