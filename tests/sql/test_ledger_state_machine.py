"""Stateful property test (issue 13): random sequences of every operation against a model.

A hypothesis RuleBasedStateMachine runs signups (with and without the trigger),
deletions and re-created ids, role changes, debits and grants (keyed from a tiny pool
of keys, so replays and CR007 happen), refunds, team changes, the backfill, its dry
run and the batched walk, balances and the allocation report, against real
PostgreSQL and the model in tests/support/ledger_model.py. Every call's result or SQLSTATE
must equal the model's; after every step the balance rows, the ledger, the team
rows, the idempotency keys and the users must equal the model's, and
verify_credit_integrity() must report exactly the team problems the model expects.

One database for the whole run; each example makes fresh users and deletes every
user at its end, so the tables other than the log start empty.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
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
                         (1, st.sampled_from(["signup", "backfill", "role_change", "refund"])))
keys = st.sampled_from([None, None, None, "k1", "k2", "k3"])
unknown_ids = st.uuids(version=4).map(str)

CREDIT_CALL = {
    "debit": "SELECT debit_credits(p_user_id => %s, p_amount => %s, p_source => %s,"
             " p_idempotency_key => %s)",
    "grant": "SELECT grant_credits(p_user_id => %s, p_amount => %s, p_source => %s,"
             " p_idempotency_key => %s)",
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


def describe(expected: Any) -> str:
    """A label for the statistics: which kind of success this was."""
    if not isinstance(expected, Outcome):
        return "ok"
    kind = "replayed" if expected.replayed else "new"
    pool = ", team pool" if expected.entry.actor is not None else ""
    return f"{kind}{pool}"


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

    The user ids are random, so whatever a rule draws from is listed in the order the
    example made it (never sorted by id): the same choices make the same example.
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

    def teardown(self) -> None:
        """Delete every user, so that the next example starts with empty tables."""
        self.conn.execute("DELETE FROM users")

    # ------------------------------------------------------------ comparisons

    def predict_call(self, predict: Callable[[], Any], query: str,
                     params: tuple[Any, ...]) -> Any:
        """Run ``query`` and check it does what ``predict`` (the model) says.

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
        label(f"{name}: {describe(expected)}")
        if isinstance(expected, Outcome):
            self.check_outcome(result, expected)
        else:
            assert result == expected
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
                    key: str | None) -> None:
        """debit_credits or grant_credits, checked against the model."""
        predict = self.model.debit if operation == "debit" else self.model.grant
        self.predict_call(lambda: predict(user, amount, source, key),
                          CREDIT_CALL[operation], (user, amount, source, key))

    def refundable_ids(self) -> st.SearchStrategy[int]:
        """Log ids to refund: mostly debits, sometimes another entry or an unknown id."""
        debits = sorted(e.log_id for e in self.model.entries()
                        if e.type == "debit" and e.log_id is not None)
        others = sorted(e.log_id for e in self.model.entries()
                        if e.type == "credit" and e.log_id is not None)
        choices: list[st.SearchStrategy[int]] = [st.just(0)]
        if others:
            choices.append(st.sampled_from(others))
        if debits:
            choices += [st.sampled_from(debits) for _ in range(4)]  # one_of drops repeats
        return st.one_of(choices)

    # ------------------------------------------------------------------ users

    @initialize(target=users, more=st.lists(roles, max_size=3),
                joined=st.lists(st.booleans(), min_size=2, max_size=2))
    def sign_up_first_users(self, more: list[str | None],
                            joined: list[bool]) -> MultipleResults[str]:
        """A bulk signup (one INSERT, the statement trigger allocates) of a team admin,
        two members, who may join the admin's pool, and up to three users of any role."""
        first = ["team_admin", "member", "member", *more]
        ids = [str(uuid.uuid4()) for _ in first]
        self.conn.execute(
            "INSERT INTO users (id, role) SELECT * FROM unnest(%s::uuid[], %s::text[])",
            (ids, first))
        for user_id, role in zip(ids, first, strict=True):
            self.model.signup(user_id, role)
        for member, join in zip(ids[1:3], joined, strict=True):
            if join:
                self.add_team_member(ids[0], member)
        return multiple(*ids)

    @rule(target=users, role=roles, with_credits=st.booleans())
    def sign_up(self, role: str | None, with_credits: bool) -> str:
        """A new user, allocated by the trigger or (as before credits-db) not at all."""
        user_id = str(uuid.uuid4())
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

    def reusable_keys(self) -> st.SearchStrategy[KeyId]:
        """Keys to use again: any, and more often one naming an entry of an account that
        has ended since (a pool debit on a deleted or re-created admin's account)."""
        ended = [k for k, e in self.model.keys.items() if self.model.account_ended(e)]
        choices = [st.sampled_from(list(self.model.keys))]
        if ended:
            choices += [st.sampled_from(ended) for _ in range(2)]  # one_of drops repeats
        return st.one_of(choices)

    @precondition(lambda self: bool(self.model.keys))
    @rule(data=st.data(), change=st.sampled_from(["none", "none", "none", "amount", "source"]))
    def reuse_key(self, data: st.DataObject, change: str) -> None:
        """Repeat a keyed call: the same parameters replay, other ones are CR007."""
        owner, operation, key = data.draw(self.reusable_keys(), "key")
        entry = self.model.keys[(owner, operation, key)]
        amount = abs(entry.amount) + (change == "amount")
        source = entry.source + ("_other" if change == "source" else "")
        self.credit_call(operation, owner, amount, source, key)

    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        """refund_credits of an earlier entry (a debit, or anything else: CR008)."""
        log_id = data.draw(self.refundable_ids(), "log_id")
        self.predict_call(lambda: self.model.refund(log_id),
                          "SELECT refund_credits(%s)", (log_id,))

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
                              "SELECT get_credit_balance(%s)", (user,))

    # -------------------------------------------------------------- invariant

    @invariant()
    def database_equals_model(self) -> None:
        """Users, balances, ledger, teams, keys and the integrity check equal the model."""
        self.check_users_and_balances()
        self.check_ledger()
        self.check_teams_and_keys()
        found = set(self.conn.execute(
            "SELECT user_id::text, problem FROM verify_credit_integrity()").fetchall())
        assert found == self.model.integrity_problems()

    def check_users_and_balances(self) -> None:
        """Every users row and balance row (the tables hold only this example's)."""
        users: dict[str, str | None] = dict(
            self.conn.execute("SELECT id::text, role FROM users").fetchall())
        assert users == {u: m.role for u, m in self.model.users.items() if m.alive}
        rows = self.conn.execute(
            "SELECT user_id::text, total_credits, used_credits, remaining_credits,"
            " allocated_credits FROM user_credits").fetchall()
        assert {r[0]: tuple(r[1:]) for r in rows} == {
            u: a.row() for u, a in self.model.accounts.items()}

    def check_ledger(self) -> None:
        """Every log row of the example's user ids, all lives; unknown ids are learnt."""
        rows = self.conn.execute(
            "SELECT user_id::text, id, amount, type, source, actor_user_id::text,"
            " idempotency_key, refund_of FROM credit_usage_log"
            " WHERE user_id = ANY(%s::uuid[]) ORDER BY id",
            (list(self.model.users),)).fetchall()
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
