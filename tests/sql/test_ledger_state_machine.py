"""Stateful property test (issue 13): random sequences of every operation against a model.

A hypothesis RuleBasedStateMachine runs signups (with and without the trigger),
deletions and re-created ids, role changes, debits and grants (keyed from a tiny pool
of keys, so replays and CR007 happen), refunds, team changes, the backfill, its dry
run and the batched walk, balances and the allocation report, against real
PostgreSQL and the model in tests/support/ledger_model.py. Every call's result or SQLSTATE
must equal the model's; after every step the balance rows, the ledger, the team
rows, the idempotency keys and the users must equal the model's, and
verify_credit_integrity() must report exactly the team problems the model expects.

Lots (revision 0010): grants with an expiry and a priority, time passing, the
sweep (expire_credits with an as_of and a p_limit) and get_credit_lots(); after
every step the lots (amount, taken, expired, expiry, priority) and each debit's
takes equal the model's, so no debit took a lapsed lot or spent out of order.
Time: the model's clock counts whole hours from 0; hour h is the timestamp
anchor + (h - clock) hours, the anchor being the database's now() when the
example began. Time passes by moving every lot's expires_at back by as many
hours (as the owner), so the database's own clock never needs to move: an
expiry at the clock's hour or before is past, one an hour ahead is not.

Renewal (revision 0011): the operator gives roles short renewal intervals (hours)
and rollover caps, takes them away, or adds a renewing role ('unknown', whose users
were on the member fallback); renew_allowances() runs now or as of an hour, with a
p_limit; time passes far enough for periods to be missed; users change roles within
periods. After every step each account's opening, period end and period allowance
equal the model's, and get_credit_balance's next_renewal too. Time passes for the
periods as for the lots: every opening (the periods' anchor, created_at) and period
end moves back with the expiries. An account is opened at the database's now(), a
fraction of an hour after the clock's hour: before each comparison that fraction
is taken off its opening, its period end and the allowance lot expiring then (as
the owner), so that it opened at the clock's hour exactly (the example lasts far
less than an hour, so every fraction is less than one).

Determinism: hypothesis replays a prefix of choices and must see the same draws
(else FlakyStrategyDefinition), so every precondition, bundle and strategy depends
only on the model, which depends only on the values drawn before, never on the
database's answers or on when the test runs:
- the time is the model's own clock (whole hours from 0); the timestamps the test
  passes (p_as_of, p_expires_at) and compares are anchor + hours, the anchor fixed
  when the example begins; nothing the model decides reads now() or the wall clock.
  The database judges expiry at statement_timestamp() and the calls without p_as_of
  at now(), both within [anchor, anchor + 1 hour) (an example lasts seconds), and
  every expiry, opening and period end the tables hold is anchor + whole hours
  (moved back by pass_time, openings snapped as above): so they and the model agree
  whatever the hour of the day, and a later hour is never reached by the real clock;
- user ids are drawn (new_ids; a repeat is replaced by a uuid5 of it), never
  uuid4(): the model orders accounts by id as the database does (the backfill's
  walk, a renewal batch's (period_ends_at, user_id) order with p_limit), so the same
  choices give the same order;
- the model never orders by the database's lot ids: lots written by one statement
  (a bulk signup's, a backfill's, a renewal's) get ids in an order the model cannot
  know, so a sweep's p_limit that would stop within such lots of one expiry is
  widened to all of them (Ledger.expire_limit; counted in the statistics); a
  renewal's own lots are the exception: revision 0015 numbers them in their
  entries' order (the renewal's before the rollover's), which the model follows;
- what the model learns from the database (log and lot ids, to compare) only names
  entries: the refund rules draw from them sorted, each drawn entry answering alike.
Replays reuse the drawn ids, so the ledger check reads only the example's log rows
(ids above those before it).

One database for the whole run; each example makes fresh users and deletes every
user at its end, so the tables other than the log start empty.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ClassVar

import psycopg
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

import credits_db
from tests.support.helpers import Conn
from tests.support.ledger_model import KeyId, Ledger, LedgerRow, ModelError, Outcome, team_limit

SETTINGS = settings(max_examples=100, stateful_step_count=45, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Draw from one of the strategies, each chosen with its weight."""
    return st.sampled_from([s for n, s in choices for _ in range(n)]).flatmap(lambda s: s)


roles = st.sampled_from(["member", "team_admin", "admin", "RecruitPro", "super_admin",
                         None, "unknown"])
# Mostly what a member's or a team admin's balance can pay, sometimes not, sometimes invalid.
debit_amounts = weighted((4, st.integers(1, 400)), (2, st.integers(401, 6000)),
                         (1, st.sampled_from([0, -3])))
grant_amounts = weighted((5, st.integers(1, 500)), (1, st.just(0)))
debit_sources = st.sampled_from(["usage", "usage", "search"])
grant_sources = weighted((5, st.sampled_from(["admin_grant", "promo"])),
                         (1, st.sampled_from(["signup", "backfill", "role_change", "renewal",
                                              "rollover", "refund", "expiry"])))
keys = st.sampled_from([None, None, None, "k1", "k2", "k3"])
unknown_ids = st.uuids(version=4).map(str)
# A new user's id is drawn too (made unique in the example by fresh_id), never
# uuid4(): the model orders by id (a backfill's walk, a renewal batch's), so a random
# id would make the same choices a different example.
new_ids = st.uuids(version=4).map(str)
# Hours from now: mostly ahead, sometimes now or past (22023).
expiries_ahead = weighted((6, st.integers(1, 6)), (1, st.sampled_from([0, -1])))
priorities = st.sampled_from([None, None, 50, 0, 10, 10, 90, 100, -1, 101])
HOUR = timedelta(hours=1)
SEEDED_ROLES = ("member", "admin", "team_admin", "RecruitPro", "super_admin")
renewal_roles = st.sampled_from(["member", "member", "admin", "team_admin", "RecruitPro"])
renewal_intervals = st.sampled_from([1, 2, 3, 5, 24])
rollover_caps = st.sampled_from([0, 50, 100, 400, 20000])

CREDIT_CALL = {
    "debit": "SELECT debit_credits(p_user_id => %s, p_amount => %s, p_source => %s,"
             " p_idempotency_key => %s)",
    "grant": "SELECT grant_credits(p_user_id => %s, p_amount => %s, p_source => %s,"
             " p_idempotency_key => %s, p_expires_at => %s, p_priority => %s)",
}


def sqlstate_of(conn: Conn, query: str, params: tuple[Any, ...]) -> str | None:
    """Run a statement; the SQLSTATE it raised, or None."""
    try:
        conn.execute(query, params)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


def scalar(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The single value a query returns."""
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def returns_void(action: Callable[[], None]) -> Callable[[], str]:
    """The model's prediction for a SQL function returning void (psycopg reads it as '')."""

    def predict() -> str:
        action()
        return ""

    return predict


def model_answer(predict: Callable[[], Any]) -> tuple[Any, ModelError | None]:
    """What the model answers: (result, None), or (None, the error it expects)."""
    try:
        return predict(), None
    except ModelError as refusal:
        return None, refusal


def label(text: str) -> None:
    """Count an outcome in hypothesis' statistics (outside a hypothesis run: nothing)."""
    if currently_in_test_context():
        event(text)


def describe(expected: Any, model: Ledger) -> str:
    """A label for the statistics: which kind of success this was."""
    if isinstance(expected, dict) and "lots_expired" in expected:
        return "expired some" if expected["lots_expired"] else "nothing due"
    if isinstance(expected, dict) and "accounts_renewed" in expected:
        if not expected["accounts_renewed"]:
            return "nothing due"
        return "renewed, rolled over" if expected["credits_rolled_over"] else "renewed"
    if not isinstance(expected, Outcome):
        return "ok"
    entry = expected.entry
    kind = "replayed" if expected.replayed else "new"
    pool = ", team pool" if entry.actor is not None else ""
    lots = ", tracked lots" if entry.takes else ""
    if entry.lot is not None and entry.lot.tracked:
        lots = ", tracked lot"
    debit = None if entry.refund_of is None else model.entry(entry.refund_of)
    if debit is not None and debit.takes:
        lots = ", onto tracked lots"
        if any(lot.lapsed(model.clock) for lot, _ in debit.takes):
            lots = ", onto a lapsed lot"
    return f"{kind}{pool}{lots}"


def insert_user(conn: Conn, user_id: str, role: str | None, *, with_credits: bool) -> None:
    """INSERT one user; without credits, as before credits-db (the trigger disabled)."""
    if with_credits:
        conn.execute("INSERT INTO users (id, role) VALUES (%s, %s)", (user_id, role))
        return
    with conn.transaction():
        conn.execute("ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
        conn.execute("INSERT INTO users (id, role) VALUES (%s, %s)", (user_id, role))
        conn.execute("ALTER TABLE users ENABLE TRIGGER users_allocate_credits")


class LedgerMachine(RuleBasedStateMachine):
    """Every operation of credits-db, checked step by step against the model.

    Whatever a rule draws from is listed in the order the example made it, or in the
    order of drawn values (ids): the same choices make the same example (see the
    module's docstring).
    """

    conn: ClassVar[Conn]

    users = Bundle[str]("users")
    deleted = Bundle[str]("deleted")
    # Mostly users of the example (alive or deleted), sometimes an id nobody has. (one_of
    # drops a repeated strategy: four Bundle objects of one bundle weigh it four times.)
    any_user = st.one_of(*[Bundle[str]("users") for _ in range(4)], unknown_ids)

    def __init__(self) -> None:
        super().__init__()
        self.model = Ledger()
        self.max_log_id = scalar(self.conn, "SELECT coalesce(max(id), 0) FROM credit_usage_log")
        self.first_log_id = self.max_log_id
        self.anchor: datetime = scalar(self.conn, "SELECT now()")

    # ------------------------------------------------------------------- time

    def at(self, hour: int) -> datetime:
        """The timestamp of an hour of the model's clock."""
        return self.anchor + (hour - self.model.clock) * HOUR

    def hour(self, when: datetime | str) -> int:
        """The model's hour of a timestamp (or its JSON text), which must be a whole hour."""
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        hours, rest = divmod(when - self.anchor, HOUR)
        assert rest == timedelta(0), f"{when} is not a whole hour from {self.anchor}"
        return self.model.clock + hours

    def in_hours(self, value: Any) -> Any:
        """A result with every expires_at (and as_of) as a model hour, created_at left out."""
        if isinstance(value, list):
            return [self.in_hours(v) for v in value]
        if isinstance(value, dict):
            return {k: self.hour(v) if k in ("expires_at", "as_of", "renews_at") and v is not None
                    else self.in_hours(v)
                    for k, v in value.items() if k != "created_at"}
        return value

    def teardown(self) -> None:
        """Delete every user and undo the operator's changes of role_credits, so that
        the next example starts with empty tables and the seeded roles."""
        self.conn.execute("DELETE FROM users")
        self.conn.execute("DELETE FROM role_credits WHERE role <> ALL(%s)", (list(SEEDED_ROLES),))
        self.conn.execute("UPDATE role_credits SET renewal_interval = NULL, rollover_cap = 0")

    def snap_opening(self, user_id: str, created_at: datetime,
                     period_ends_at: datetime | None) -> tuple[datetime, datetime | None]:
        """An account opened since the last step opened a fraction of an hour after
        the clock's hour: take it off its opening, period end and the allowance lot
        expiring then (see the module's docstring). Its opening and period end now."""
        fraction = (created_at - self.anchor) % HOUR
        if not fraction:
            return created_at, period_ends_at
        self.conn.execute(
            "WITH lots AS (UPDATE credit_lots SET expires_at = expires_at - %(d)s"
            "              WHERE user_id = %(u)s AND expires_at = %(e)s"
            "                AND source IN ('signup', 'backfill', 'role_change'))"
            " UPDATE user_credits SET created_at = created_at - %(d)s,"
            "        period_ends_at = period_ends_at - %(d)s WHERE user_id = %(u)s",
            {"d": fraction, "u": user_id, "e": period_ends_at})
        return created_at - fraction, None if period_ends_at is None else period_ends_at - fraction

    # ------------------------------------------------------------ comparisons

    def predict_call(self, predict: Callable[[], Any], query: str,
                     params: tuple[Any, ...],
                     seen: Callable[[Any], Any] | None = None) -> Any:
        """Run ``query`` and check it does what ``predict`` (the model) says
        (``seen`` first turns the result into the model's terms).

        Returns the call's result, or None when the model expects (and the database
        raised) an error.
        """
        name = query.split("(", 1)[0].removeprefix("SELECT ")
        expected, refusal = model_answer(predict)
        if refusal is not None:
            label(f"{name}: {refusal.sqlstate}")
            assert sqlstate_of(self.conn, query, params) == refusal.sqlstate, refusal
            return None
        result = scalar(self.conn, query, params)
        label(f"{name}: {describe(expected, self.model)}")
        if isinstance(expected, Outcome):
            self.check_outcome(result, expected)
        else:
            assert (result if seen is None else seen(result)) == expected
        return result

    def check_outcome(self, result: dict[str, Any], outcome: Outcome) -> None:
        """A debit/grant/refund result equals the model's; a new entry learns its log id."""
        expected = outcome.expected()
        if outcome.entry.log_id is None:
            assert result["log_id"] > self.max_log_id, (result, expected)
            expected["log_id"] = outcome.entry.log_id = result["log_id"]
            self.max_log_id = result["log_id"]
        assert result == expected

    def credit_call(self, operation: str, user: str, amount: int, source: str,
                    key: str | None, expires: int | None = None,
                    priority: int | None = None) -> None:
        """debit_credits or grant_credits (expiring at the hour ``expires``, spent by
        ``priority``), checked against the model."""
        if operation == "debit":
            self.predict_call(lambda: self.model.debit(user, amount, source, key),
                              CREDIT_CALL["debit"], (user, amount, source, key))
            return
        self.predict_call(
            lambda: self.model.grant(user, amount, source, key, expires, priority),
            CREDIT_CALL["grant"],
            (user, amount, source, key, None if expires is None else self.at(expires), priority))

    def refundable_ids(self) -> st.SearchStrategy[int]:
        """Log ids to refund: mostly debits, sometimes another entry or an unknown id."""
        debits = sorted(e.log_id for e in self.model.entries()
                        if e.type == "debit" and e.log_id is not None)
        others = sorted(e.log_id for e in self.model.entries()
                        if e.type in ("credit", "expire") and e.log_id is not None)
        choices: list[st.SearchStrategy[int]] = [st.just(0)]
        if others:
            choices.append(st.sampled_from(others))
        if debits:
            choices += [st.sampled_from(debits) for _ in range(4)]  # one_of drops repeats
        return st.one_of(choices)

    # ------------------------------------------------------------------ users

    def fresh_id(self, drawn: str, taken: list[str] | None = None) -> str:
        """A drawn id, or (used already in the example) one derived from it: a new
        user's id, a function of the drawn values only."""
        while drawn in self.model.users or drawn in (taken or []):
            drawn = str(uuid.uuid5(uuid.NAMESPACE_OID, drawn))
        return drawn

    @initialize(target=users, more=st.lists(roles, max_size=3),
                joined=st.lists(st.booleans(), min_size=2, max_size=2),
                lots=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 300),
                                        st.one_of(st.none(), st.integers(1, 4)),
                                        st.sampled_from([None, 0, 10, 90])), max_size=4),
                drawn_ids=st.lists(new_ids, min_size=6, max_size=6))
    def sign_up_first_users(self, more: list[str | None], joined: list[bool],
                            lots: list[tuple[int, int, int | None, int | None]] | None = None,
                            drawn_ids: list[str] | None = None) -> MultipleResults[str]:
        """A bulk signup (one INSERT, the statement trigger allocates) of a team admin,
        two members, who may join the admin's pool, and up to three users of any role;
        then grants of tracked lots to the first three (user, amount, expiry, priority).
        (Called outside hypothesis, without ``drawn_ids``: random ids.)"""
        first = ["team_admin", "member", "member", *more]
        ids: list[str] = []
        for drawn in drawn_ids or [str(uuid.uuid4()) for _ in first]:
            ids.append(self.fresh_id(drawn, ids))
        ids = ids[:len(first)]
        self.conn.execute(
            "INSERT INTO users (id, role) SELECT * FROM unnest(%s::uuid[], %s::text[])",
            (ids, first))
        for n, (user_id, role) in enumerate(zip(ids, first, strict=True)):
            self.model.signup(user_id, role, same_statement=n > 0)
        for member, join in zip(ids[1:3], joined, strict=True):
            if join:
                self.add_team_member(ids[0], member)
        for who, amount, expires_in, priority in lots or []:
            if expires_in is None and priority is None:
                priority = 10
            expires = None if expires_in is None else self.model.clock + expires_in
            self.credit_call("grant", ids[who], amount, "promo", None, expires, priority)
        return multiple(*ids)

    @rule(target=users, role=roles, with_credits=st.booleans(), drawn_id=new_ids)
    def sign_up(self, role: str | None, with_credits: bool, drawn_id: str) -> str:
        """A new user, allocated by the trigger or (as before credits-db) not at all."""
        user_id = self.fresh_id(drawn_id)
        insert_user(self.conn, user_id, role, with_credits=with_credits)
        self.model.signup(user_id, role, with_credits=with_credits)
        return user_id

    @rule(target=deleted, user=users)
    def delete_user(self, user: str) -> str | MultipleResults[str]:
        """DELETE FROM users (a no-op for a deleted id)."""
        was_alive = self.model.alive(user)
        self.conn.execute("DELETE FROM users WHERE id = %s", (user,))
        self.model.delete(user)
        return user if was_alive else multiple()

    @precondition(lambda self: bool(self.model.teams))
    @rule(target=deleted, data=st.data(), role=st.one_of(st.none(), roles))
    def delete_team_admin(self, data: st.DataObject,
                          role: str | None) -> str | MultipleResults[str]:
        """DELETE a team admin with members: their pool and account end. With a role,
        the id signs up again at once (a new account), as recreate_user does."""
        admin = data.draw(st.sampled_from(list(dict.fromkeys(self.model.teams.values()))),
                          "admin")
        self.delete_user(admin)
        if role is None:
            return admin
        self.recreate_user(admin, role, with_credits=True)
        return multiple()

    @rule(user=consumes(deleted), role=roles, with_credits=st.booleans())
    def recreate_user(self, user: str, role: str | None, with_credits: bool) -> None:
        """INSERT a deleted user's id again: a new account, no old keys."""
        insert_user(self.conn, user, role, with_credits=with_credits)
        self.model.signup(user, role, with_credits=with_credits)

    @rule(user=any_user, role=roles)
    def change_role(self, user: str, role: str | None) -> None:
        """UPDATE users SET role (the top-up trigger)."""
        self.conn.execute("UPDATE users SET role = %s WHERE id = %s", (role, user))
        self.model.change_role(user, role)

    def in_renewing_periods(self) -> list[str]:
        """Users whose account's role renews, in the order the example made them."""
        return [u for u in self.model.alive_in_order()
                if u in self.model.accounts and self.model.renewing_role(u) is not None]

    @precondition(lambda self: bool(self.in_renewing_periods()))
    @rule(data=st.data(), role=st.sampled_from(["member", "admin", "team_admin", "RecruitPro",
                                                "super_admin", "unknown", None]))
    def change_role_in_period(self, data: st.DataObject, role: str | None) -> None:
        """A role change of an account whose role renews (its period live, or ended and
        not renewed yet): the period's allowance rises to the new role's, never falls."""
        user = data.draw(st.sampled_from(self.in_renewing_periods()), "user")
        self.change_role(user, role)

    # --------------------------------------------------------------- spending

    @rule(user=any_user, amount=debit_amounts, source=debit_sources, key=keys)
    def debit(self, user: str, amount: int, source: str, key: str | None) -> None:
        """debit_credits with a small amount, sometimes keyed."""
        self.credit_call("debit", user, amount, source, key)

    @precondition(lambda self: bool(self.model.teams))
    @rule(data=st.data(), amount=st.integers(1, 6000), source=debit_sources,
          key=st.sampled_from([None, "k1", "k2", "k3"]))
    def debit_by_team_member(self, data: st.DataObject, amount: int, source: str,
                             key: str | None) -> None:
        """debit_credits by a member of a pool, often more than their own balance."""
        member = data.draw(st.sampled_from(list(self.model.teams)), "member")
        self.credit_call("debit", member, amount, source, key)

    @rule(user=any_user, amount=grant_amounts, source=grant_sources, key=keys)
    def grant(self, user: str, amount: int, source: str, key: str | None) -> None:
        """grant_credits, sometimes keyed, sometimes with a reserved source (22023)."""
        self.credit_call("grant", user, amount, source, key)

    @rule(user=any_user, amount=grant_amounts, source=grant_sources, key=keys,
          expires_in=st.one_of(st.none(), expiries_ahead), priority=priorities)
    def grant_lot(self, user: str, amount: int, source: str, key: str | None,
                  expires_in: int | None, priority: int | None) -> None:
        """grant_credits with an expiry (hours from now; now or past: 22023) and/or a
        priority (outside 0..100: 22023): a tracked lot, unless neither is given."""
        expires = None if expires_in is None else self.model.clock + expires_in
        self.credit_call("grant", user, amount, source, key, expires, priority)

    @precondition(lambda self: bool(self.model.alive_in_order()))
    @rule(data=st.data(), amount=st.integers(1, 300), key=keys,
          expires_in=st.one_of(st.none(), st.integers(1, 6)),
          priority=st.sampled_from([None, 0, 10, 50, 90]))
    def grant_tracked_lot(self, data: st.DataObject, amount: int, key: str | None,
                          expires_in: int | None, priority: int | None) -> None:
        """A valid grant of a tracked lot to an existing user: an expiry, a priority
        other than 50, or both."""
        user = data.draw(st.sampled_from(self.model.alive_in_order()), "user")
        if expires_in is None and priority in (None, 50):
            priority = 10
        expires = None if expires_in is None else self.model.clock + expires_in
        self.credit_call("grant", user, amount, "promo", key, expires, priority)

    def tracked_spenders(self) -> list[str]:
        """Users whose own account or pool holds tracked credits (lapsed or not)."""
        accounts = self.model.accounts
        return [u for u in self.model.alive_in_order()
                if (u in accounts and accounts[u].tracked > 0)
                or (u in self.model.teams and self.model.teams[u] in accounts
                    and accounts[self.model.teams[u]].tracked > 0)]

    @precondition(lambda self: bool(self.tracked_spenders()))
    @rule(data=st.data(), share=st.sampled_from([0.1, 0.3, 0.5, 0.9, 1.0, 1.01]),
          key=st.sampled_from([None, None, "k1"]))
    def debit_tracked(self, data: st.DataObject, share: float, key: str | None) -> None:
        """A debit by a user whose account or pool holds tracked lots, for a share of
        what the larger can spend now (1.01: more, refused or left to the pool)."""
        user = data.draw(st.sampled_from(self.tracked_spenders()), "user")
        balance = self.model.balance(user)
        amount = max(1, int(balance["spendable"] * share) + (share > 1))
        self.credit_call("debit", user, amount, "usage", key)

    def refundable_lot_debits(self) -> list[int]:
        """Debits not refunded yet that took from tracked lots of an account still open."""
        return [e.log_id for e in self.model.entries()
                if e.takes and not e.refunded and e.log_id is not None
                and not self.model.account_ended(e)]

    @precondition(lambda self: bool(self.refundable_lot_debits()))
    @rule(data=st.data())
    def refund_lot_debit(self, data: st.DataObject) -> None:
        """refund_credits of a debit that took from tracked lots: back to them, expiring
        at once on a lapsed one."""
        log_id = data.draw(st.sampled_from(self.refundable_lot_debits()), "log_id")
        self.predict_call(lambda: self.model.refund(log_id),
                          "SELECT refund_credits(%s)", (log_id,))

    def reusable_keys(self) -> st.SearchStrategy[KeyId]:
        """Keys to use again: any, and more often one naming an entry of an account that
        has ended since (a pool debit on a deleted or re-created admin's account)."""
        ended = [k for k, e in self.model.keys.items() if self.model.account_ended(e)]
        choices = [st.sampled_from(list(self.model.keys))]
        if ended:
            choices += [st.sampled_from(ended) for _ in range(2)]  # one_of drops repeats
        return st.one_of(choices)

    @precondition(lambda self: bool(self.model.keys))
    @rule(data=st.data(), change=st.sampled_from(["none", "none", "none", "amount", "source",
                                                  "expiry", "priority"]))
    def reuse_key(self, data: st.DataObject, change: str) -> None:
        """Repeat a keyed call: the same parameters replay (a grant's also when its
        expiry has passed since, and with priority NULL for 50), other ones are CR007."""
        owner, operation, key = data.draw(self.reusable_keys(), "key")
        entry = self.model.keys[(owner, operation, key)]
        amount = abs(entry.amount) + (change == "amount")
        source = entry.source + ("_other" if change == "source" else "")
        lot = entry.lot
        expires = None if lot is None else lot.expires
        priority = None if lot is None or lot.priority == 50 else lot.priority
        if change == "expiry":
            expires = self.model.clock + 1 if expires is None else expires + 1
        elif change == "priority":
            priority = 20 if priority == 10 else 10
        self.credit_call(operation, owner, amount, source, key, expires, priority)

    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        """refund_credits of an earlier entry (a debit, or anything else: CR008)."""
        log_id = data.draw(self.refundable_ids(), "log_id")
        self.predict_call(lambda: self.model.refund(log_id),
                          "SELECT refund_credits(%s)", (log_id,))

    # ------------------------------------------------------------------- time

    @rule(hours=st.sampled_from([1, 1, 2, 3, 4, 8, 25]))
    def pass_time(self, hours: int) -> None:
        """Time passes: every expiry, opening and period end moves back by ``hours`` (as
        the owner), the model's clock forward by as many (far enough, periods are missed)."""
        self.conn.execute("UPDATE credit_lots SET expires_at = expires_at - make_interval(hours => %s)"
                          " WHERE expires_at IS NOT NULL", (hours,))
        self.conn.execute("UPDATE user_credits SET created_at = created_at - make_interval(hours => %s),"
                          " period_ends_at = period_ends_at - make_interval(hours => %s)",
                          (hours, hours))
        self.model.pass_time(hours)

    def sweep_limit(self, as_of: int | None, limit: int | None) -> int | None:
        """The p_limit to pass: the drawn one, unless it would stop within lots of one
        expiry written by one statement (Ledger.expire_limit): then all of those."""
        widened = self.model.expire_limit(as_of, limit)
        if widened != limit:
            label("expire_credits: p_limit widened over one statement's lots")
        return widened

    @rule(as_of=st.sampled_from(["now", "now", "null", -1, 0, 1, 2, 5]),
          limit=st.sampled_from([None, None, None, 1, 2, 0]))
    def expire(self, as_of: str | int, limit: int | None) -> None:
        """expire_credits(): now (the default), or as of an hour from now (later
        expires early), p_limit lots at a time; p_as_of NULL is 22004, p_limit 0 22023."""
        if as_of == "null":
            def refuse() -> Any:
                raise ModelError("22004", "p_as_of NULL")
            self.predict_call(refuse, "SELECT expire_credits(NULL, %s)", (limit,))
        elif as_of == "now":
            now_limit = self.sweep_limit(None, limit)
            self.predict_call(lambda: self.model.expire(None, now_limit),
                              "SELECT expire_credits(p_limit => %s)", (now_limit,),
                              self.now_is_this_hour)
        else:
            assert isinstance(as_of, int)
            hour = self.model.clock + as_of
            hour_limit = self.sweep_limit(hour, limit)
            self.predict_call(lambda: self.model.expire(hour, hour_limit),
                              "SELECT expire_credits(%s, %s)", (self.at(hour), hour_limit),
                              self.in_hours)

    def now_is_this_hour(self, report: dict[str, Any]) -> dict[str, Any]:
        """A report as of now: its as_of within the clock's hour, then None as the model's."""
        when = datetime.fromisoformat(report["as_of"])
        assert self.anchor <= when < self.at(self.model.clock + 1), report
        return report | {"as_of": None}

    @rule(as_of=st.sampled_from(["now", "now", "now", "null", "infinity", -1, 0, 1, 2, 5, 12]),
          limit=st.sampled_from([None, None, None, 1, 2, 0]))
    def renew(self, as_of: str | int, limit: int | None) -> None:
        """renew_allowances(): now (the default), or as of an hour from now, p_limit
        accounts at a time; p_as_of NULL is 22004, infinite 22023, p_limit 0 22023."""
        if as_of in ("null", "infinity"):
            def refuse() -> Any:
                raise ModelError("22004" if as_of == "null" else "22023", f"p_as_of {as_of}")
            self.predict_call(refuse, "SELECT renew_allowances(%s::timestamptz, %s)",
                              (None if as_of == "null" else as_of, limit))
            return
        if as_of == "now":
            self.predict_call(lambda: self.model.renew(None, limit),
                              "SELECT renew_allowances(p_limit => %s)", (limit,),
                              self.now_is_this_hour)
        else:
            assert isinstance(as_of, int)
            hour = self.model.clock + as_of
            self.predict_call(lambda: self.model.renew(hour, limit),
                              "SELECT renew_allowances(%s, %s)", (self.at(hour), limit),
                              self.in_hours)

    def next_period_end(self) -> int | None:
        """The soonest period end to come of an account whose role renews."""
        ends = [a.period_ends for u, a in self.model.accounts.items()
                if a.period_ends is not None and a.period_ends > self.model.clock
                and self.model.renewing_role(u) is not None]
        return min(ends, default=None)

    @precondition(lambda self: self.next_period_end() is not None)
    @rule(late=st.sampled_from([0, 0, 1]), limit=st.sampled_from([None, None, 1]))
    def renew_at_period_end(self, late: int, limit: int | None) -> None:
        """Time passes to the soonest period end (or an hour past it) and the renewal
        runs as of the clock's hour (p_as_of given): the period that follows starts
        where the ended one ended (a rollover)."""
        end = self.next_period_end()
        assert end is not None
        self.pass_time(end - self.model.clock + late)
        self.renew(0, limit)

    @rule(role=renewal_roles, interval=st.one_of(st.none(), renewal_intervals),
          cap=rollover_caps)
    def set_renewal(self, role: str, interval: int | None, cap: int) -> None:
        """The operator: a role starts renewing every ``interval`` hours (its accounts are
        scheduled), renews at another interval, or stops (None); its rollover cap."""
        self.conn.execute(
            "UPDATE role_credits SET renewal_interval = make_interval(hours => %s),"
            " rollover_cap = %s WHERE role = %s", (interval, cap, role))
        self.model.set_renewal(role, interval, cap)

    @precondition(lambda self: "unknown" not in self.model.roles)
    @rule(interval=st.one_of(st.none(), renewal_intervals), cap=rollover_caps)
    def add_role(self, interval: int | None, cap: int) -> None:
        """The operator adds the role 'unknown' (500), renewing or not: its users, on the
        member fallback until now, have it from now on (with an interval, scheduled)."""
        self.conn.execute(
            "INSERT INTO role_credits (role, credits, renewal_interval, rollover_cap)"
            " VALUES ('unknown', 500, make_interval(hours => %s), %s)", (interval, cap))
        self.model.add_role("unknown", 500, interval, cap)

    @initialize(renewing=st.lists(st.tuples(renewal_roles, renewal_intervals, rollover_caps),
                                  max_size=2))
    def configure_renewal(self, renewing: list[tuple[str, int, int]]) -> None:
        """Before or after the first signups (hypothesis orders the initializers):
        up to two roles renew."""
        for role, interval, cap in renewing:
            self.set_renewal(role, interval, cap)

    @rule(user=any_user)
    def credit_lots(self, user: str) -> None:
        """get_credit_lots(): the lots in spending order, each's remainder and state."""
        self.predict_call(lambda: self.model.credit_lots(user),
                          "SELECT get_credit_lots(%s)", (user,), self.in_hours)

    # ------------------------------------------------------------------ teams

    @rule(admin=any_user, member=any_user)
    def add_team_member(self, admin: str, member: str) -> None:
        """add_team_member, with its six refusals."""
        self.predict_call(returns_void(lambda: self.model.add_member(admin, member)),
                          "SELECT add_team_member(%s, %s)", (admin, member))

    @precondition(lambda self: len(self.model.alive_in_order()) > 1
                  and any(team_limit(self.model.users[u].role) > 0
                          for u in self.model.alive_in_order()))
    @rule(data=st.data())
    def join_team(self, data: st.DataObject) -> None:
        """add_team_member of two existing users, the admin's role allowing a team (pools
        form often; the team may be full, the member in another team, or in this one)."""
        alive = self.model.alive_in_order()
        admins = [u for u in alive if team_limit(self.model.users[u].role) > 0]
        admin = data.draw(st.sampled_from(admins), "admin")
        member = data.draw(st.sampled_from([u for u in alive if u != admin]), "member")
        self.add_team_member(admin, member)

    @rule(admin=any_user, member=any_user)
    def remove_team_member(self, admin: str, member: str) -> None:
        """remove_team_member: true if the pair was a membership."""
        self.predict_call(lambda: self.model.remove_member(admin, member),
                          "SELECT remove_team_member(%s, %s)", (admin, member))

    # ------------------------------------------------------ backfill, reports

    def run_backfill(self, *, dry_run: bool) -> None:
        """backfill_user_credits(p_dry_run), its report checked against the model."""
        self.predict_call(lambda: self.model.backfill(dry_run=dry_run),
                          "SELECT backfill_user_credits(p_dry_run => %s)", (dry_run,))

    def walk_batch(self, after: str | None, limit: int, *, python_api: bool) -> str | None:
        """One backfill_user_credits_batch() call (SQL or credits_db.backfill_batch)."""
        expected = self.model.backfill_batch(after, limit)
        if python_api:
            batch = credits_db.backfill_batch(self.conn, after=after, limit=limit)
            assert (batch.users_scanned, batch.users_backfilled, batch.credits_allocated,
                    batch.fallback_role_users,
                    None if batch.last_user_id is None else str(batch.last_user_id)) == (
                expected["users_scanned"], expected["users_backfilled"],
                expected["credits_allocated"], expected["fallback_role_users"],
                expected["last_user_id"])
        else:
            assert scalar(self.conn, "SELECT backfill_user_credits_batch(%s, %s)",
                          (after, limit)) == expected
        last: str | None = expected["last_user_id"]
        return last

    @rule(mode=st.sampled_from(["all", "dry_run", "walk", "walk_python"]),
          limit=st.integers(1, 4))
    def backfill(self, mode: str, limit: int) -> None:
        """backfill_user_credits(p_dry_run), or the batched walk by primary key (limit
        users a batch, until last_user_id is NULL) and a final backfill_user_credits()."""
        if mode.startswith("walk"):
            after = self.walk_batch(None, limit, python_api=mode == "walk_python")
            while after is not None:
                after = self.walk_batch(after, limit, python_api=mode == "walk_python")
        self.run_backfill(dry_run=mode == "dry_run")

    @rule(user=st.one_of(any_user, st.none()))
    def report(self, user: str | None) -> None:
        """get_credit_balance of a user (own, pool, spendable), or (None) the allocation
        report."""
        if user is None:
            self.predict_call(self.model.allocation_report,
                              "SELECT credit_allocation_report()", ())
        else:
            self.predict_call(lambda: self.model.balance(user),
                              "SELECT get_credit_balance(%s)", (user,), self.in_hours)

    # -------------------------------------------------------------- invariant

    @invariant()
    def database_equals_model(self) -> None:
        """Users, balances, periods, ledger, lots, takes, teams, keys, the roles and the
        integrity check equal the model."""
        self.check_users_and_balances()
        self.check_roles()
        self.check_ledger()
        self.check_lots()
        self.check_takes()
        self.check_teams_and_keys()
        found = set(self.conn.execute(
            "SELECT user_id::text, problem FROM verify_credit_integrity()").fetchall())
        assert found == self.model.integrity_problems()

    def check_users_and_balances(self) -> None:
        """Every users row and balance row (the tables hold only this example's), with
        each account's opening, period end and allowance (as hours, the openings of
        this step's accounts snapped first)."""
        users: dict[str, str | None] = dict(
            self.conn.execute("SELECT id::text, role FROM users").fetchall())
        assert users == {u: m.role for u, m in self.model.users.items() if m.alive}
        rows = self.conn.execute(
            "SELECT user_id::text, total_credits, used_credits, remaining_credits,"
            " allocated_credits, tracked_credits, created_at, period_ends_at,"
            " period_allowance FROM user_credits").fetchall()
        found = {}
        for user_id, *balance, created_at, period_ends_at, allowance in rows:
            opened, ends = self.snap_opening(user_id, created_at, period_ends_at)
            found[user_id] = (tuple(balance),
                              (self.hour(opened), None if ends is None else self.hour(ends),
                               allowance))
        assert found == {u: (a.row(), a.period_row()) for u, a in self.model.accounts.items()}

    def check_roles(self) -> None:
        """role_credits: credits, team limit, renewal interval (hours), rollover cap."""
        roles = self.conn.execute(
            "SELECT role, credits, team_member_limit,"
            " extract(epoch FROM renewal_interval)::integer / 3600, rollover_cap"
            " FROM role_credits").fetchall()
        assert {r: tuple(rest) for r, *rest in roles} == {
            r: (x.credits, x.team_member_limit, x.interval, x.rollover_cap)
            for r, x in self.model.roles.items()}

    def check_ledger(self) -> None:
        """Every log row of the example's user ids, all lives; unknown ids are learnt."""
        rows = self.conn.execute(
            "SELECT user_id::text, id, amount, type, source, actor_user_id::text,"
            " idempotency_key, refund_of, lot_id FROM credit_usage_log"
            " WHERE user_id = ANY(%s::uuid[]) AND id > %s ORDER BY id",
            (list(self.model.users), self.first_log_id)).fetchall()
        found: dict[str, list[tuple[int, LedgerRow]]] = {}
        for user_id, log_id, *columns in rows:
            found.setdefault(user_id, []).append((log_id, tuple(columns)))
        assert {u: [c for _, c in r] for u, r in found.items()} == {
            u: [e.row() for e in entries] for u, entries in self.model.log.items() if entries}
        for user_id, entries in self.model.log.items():
            for entry, (log_id, _) in zip(entries, found.get(user_id, []), strict=True):
                assert entry.log_id in (None, log_id)
                entry.log_id = log_id
                self.max_log_id = max(self.max_log_id, log_id)

    def check_lots(self) -> None:
        """Every lot (the table holds only this example's), per account in creation
        order; lot ids are learnt."""
        rows = self.conn.execute(
            "SELECT user_id::text, id, log_id, source, amount, taken, expired, expires_at,"
            " priority FROM credit_lots ORDER BY id").fetchall()
        found: dict[str, list[tuple[int, tuple[Any, ...]]]] = {}
        for user_id, lot_id, log_id, source, amount, taken, expired, expires_at, priority in rows:
            hour = None if expires_at is None else self.hour(expires_at)
            found.setdefault(user_id, []).append(
                (lot_id, (log_id, source, amount, taken, expired, hour, priority)))
        expected = {
            u: [(None if lot.entry is None else lot.entry.log_id, lot.source, lot.amount,
                 lot.taken, lot.expired, lot.expires, lot.priority) for lot in a.lots]
            for u, a in self.model.accounts.items() if a.lots}
        assert {u: [c for _, c in r] for u, r in found.items()} == expected
        for user_id, account in self.model.accounts.items():
            for lot, (lot_id, _) in zip(account.lots, found.get(user_id, []), strict=True):
                assert lot.lot_id in (None, lot_id)
                lot.lot_id = lot_id

    def check_takes(self) -> None:
        """What each debit of the example took from which tracked lot (takes outlive
        their account, as the log does)."""
        rows = self.conn.execute(
            "SELECT log_id, lot_id, amount FROM credit_lot_takes WHERE log_id > %s",
            (self.first_log_id,)).fetchall()
        assert sorted(rows) == sorted(
            (e.log_id, lot.lot_id, take) for e in self.model.entries() for lot, take in e.takes)

    def check_teams_and_keys(self) -> None:
        """The team rows (with their seats) and the idempotency keys."""
        teams = self.conn.execute(
            "SELECT team_member_id::text, team_admin_id::text, seat FROM team_credit_sharing"
        ).fetchall()
        assert {m: (a, seat) for m, a, seat in teams} == {
            m: (a, self.model.seats[m]) for m, a in self.model.teams.items()}
        keys = self.conn.execute(
            "SELECT owner_user_id::text, operation, idempotency_key, log_id"
            " FROM credit_idempotency_keys").fetchall()
        assert {(o, op, k): log_id for o, op, k, log_id in keys} == {
            k: e.log_id for k, e in self.model.keys.items()}


def machine_on(conn: Conn) -> type[LedgerMachine]:
    """The machine bound to a test's database (whose users table must be empty)."""
    assert scalar(conn, "SELECT count(*) FROM users") == 0

    class Machine(LedgerMachine):
        """LedgerMachine on this connection."""

    Machine.conn = conn
    return Machine


def test_random_operations_agree_with_the_model(conn: Conn) -> None:
    """Random sequences of every operation: the database does what the model says."""
    run_state_machine_as_test(machine_on(conn), settings=SETTINGS)


@pytest.mark.parametrize("admin_signs_up_again", [True, False])
def test_replay_of_a_pool_debit_whose_account_ended(conn: Conn,
                                                    admin_signs_up_again: bool) -> None:
    """A member's keyed pool debit, replayed after the admin's account ended, answers the
    original result: remaining_credits as after the original entry (4000).

    Found by the state machine. The admin either signs up again (a new account) or, in
    an account opened after an earlier life, is deleted; the replay must count the
    entries of the account the debit was written to, not those of another life.
    """
    machine = machine_on(conn)()
    machine.sign_up_first_users(more=[], joined=[True, False])
    admin, member = list(machine.model.users)[:2]
    if not admin_signs_up_again:
        machine.delete_user(admin)
        machine.recreate_user(admin, "team_admin", with_credits=True)
        machine.add_team_member(admin, member)
    machine.credit_call("debit", member, 1000, "usage", "k1")
    machine.delete_user(admin)
    if admin_signs_up_again:
        machine.recreate_user(admin, "team_admin", with_credits=True)
    machine.database_equals_model()
    machine.credit_call("debit", member, 1000, "usage", "k1")
    machine.teardown()


@pytest.mark.parametrize("accounts", [3, 12])
def test_renewal_with_rollover_of_many_accounts(conn: Conn, accounts: int) -> None:
    """A renewal with rollovers of a few and of many accounts in one call, then a
    debit of each and a sweep: lots, takes and the ledger equal the model's.

    Found by the state machine: from about 8 accounts a call the renewal's join is
    hashed, and before revision 0015 an account's rollover lot got the lower id, so
    it, not the renewal lot, was spent first (12 failed, 3 passed)."""
    machine = machine_on(conn)()
    machine.set_renewal("member", 2, 100)
    ids = [str(uuid.UUID(int=n + 1)) for n in range(accounts)]
    machine.conn.execute(
        "INSERT INTO users (id, role) SELECT unnest(%s::uuid[]), 'member'", (ids,))
    for n, user_id in enumerate(ids):
        machine.model.signup(user_id, "member", same_statement=n > 0)
    machine.database_equals_model()
    machine.renew_at_period_end(late=0, limit=None)
    machine.database_equals_model()
    for user_id in ids:
        machine.credit_call("debit", user_id, 30, "usage", None)
    machine.database_equals_model()
    machine.renew_at_period_end(late=0, limit=None)
    machine.database_equals_model()
    machine.teardown()
