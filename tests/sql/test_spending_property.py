"""Property: random sequences of grants, debits, refunds, team and role changes keep every invariant.

A small Python model predicts each call's outcome (result or error code); the
database must agree after every step, and verify_credit_integrity() must report
exactly the team problems the model expects (none for the ledger). One database
per test, fresh users per example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.helpers import Conn, add_users, balance
from tests.support.spending import add_member, debit, grant, integrity, refund, remove_member

ALLOCATION = {"member": 350, "admin": 1000, "team_admin": 5000, "RecruitPro": 1000,
              "super_admin": 10000}
TEAM_LIMIT = {"team_admin": 4}
ROLES = [None, "member", "admin", "team_admin", "super_admin"]
START_ROLES = ["team_admin", "team_admin", "member", "member", "admin"]
N = len(START_ROLES)

user_index = st.integers(0, N - 1)
amount = st.integers(1, 3000)
operation = st.one_of(
    st.tuples(st.just("grant"), user_index, amount),
    st.tuples(st.just("debit"), user_index, amount, st.sampled_from([None, None, "k1", "k2"])),
    st.tuples(st.just("refund"), st.integers(0, 20)),
    st.tuples(st.just("add"), user_index, user_index),
    st.tuples(st.just("remove"), user_index, user_index),
    st.tuples(st.just("role"), user_index, st.sampled_from(ROLES)),
)


def allocation(role: str | None) -> int:
    return ALLOCATION.get(role or "", ALLOCATION["member"])


@dataclass
class Entry:
    log_id: int
    account: int
    actor: int | None
    amount: int
    key: str | None
    refunded: bool = False


@dataclass
class Model:
    roles: list[str | None]
    total: list[int]
    used: list[int] = field(default_factory=lambda: [0] * N)
    team: dict[int, int] = field(default_factory=dict)  # member -> admin
    debits: list[Entry] = field(default_factory=list)
    allocated: list[int] = field(default_factory=list)  # the largest role allocation given

    def remaining(self, u: int) -> int:
        return self.total[u] - self.used[u]

    def limit(self, u: int) -> int:
        return TEAM_LIMIT.get(self.roles[u] or "", 0)


def expect_error(call: Callable[[], object], sqlstate: str) -> None:
    with pytest.raises(psycopg.Error) as caught:
        call()
    assert caught.value.sqlstate == sqlstate, caught.value


def step(conn: Conn, ids: list[str], m: Model, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "grant":
        _, u, amt = op
        result = grant(conn, ids[u], amt)
        m.total[u] += amt
        assert result["remaining_credits"] == m.remaining(u)
    elif kind == "debit":
        _, u, amt, key = op
        do_debit(conn, ids, m, u, amt, key)
    elif kind == "refund":
        _, n = op
        if not m.debits:
            return
        entry = m.debits[n % len(m.debits)]
        if entry.refunded:
            expect_error(partial(refund, conn, entry.log_id), "CR008")
            return
        result = refund(conn, entry.log_id)
        entry.refunded = True
        m.total[entry.account] += entry.amount
        assert result["remaining_credits"] == m.remaining(entry.account)
    elif kind == "add":
        _, a, u = op
        def call() -> None:
            add_member(conn, ids[a], ids[u])

        if a == u:
            expect_error(call, "CR009")
        elif m.limit(a) == 0:
            expect_error(call, "CR003")
        elif u in m.team and m.team[u] != a:
            expect_error(call, "CR004")
        elif u in m.team:
            call()
        elif sum(1 for admin in m.team.values() if admin == a) >= m.limit(a):
            expect_error(call, "CR002")
        else:
            call()
            m.team[u] = a
    elif kind == "remove":
        _, a, u = op
        existed = m.team.get(u) == a
        assert remove_member(conn, ids[a], ids[u]) is existed
        if existed:
            del m.team[u]
    elif kind == "role":
        _, u, role = op
        conn.execute("UPDATE users SET role = %s WHERE id = %s", (role, ids[u]))
        topup = max(0, allocation(role) - m.allocated[u])
        m.total[u] += topup
        m.allocated[u] += topup
        m.roles[u] = role


def do_debit(conn: Conn, ids: list[str], m: Model, u: int, amt: int, key: str | None) -> None:
    def call() -> dict[str, Any]:
        return debit(conn, ids[u], amt, idempotency_key=key)

    if key is not None:
        # A debit's key is the spender's, whichever account paid.
        mine = [e for e in m.debits if e.key == key
                and (e.actor if e.actor is not None else e.account) == u]
        if mine:
            if mine[0].amount != amt:
                expect_error(call, "CR007")
                return
            result = call()
            assert result["replayed"] is True and result["log_id"] == mine[0].log_id
            return
    if m.remaining(u) >= amt:
        account, actor = u, None
    elif u in m.team and m.remaining(m.team[u]) >= amt:
        account, actor = m.team[u], u
    else:
        expect_error(call, "CR001")
        return
    result = call()
    assert result["replayed"] is False
    assert result["account_user_id"] == ids[account]
    assert result["from_team_pool"] is (actor is not None)
    m.used[account] += amt
    assert result["remaining_credits"] == m.remaining(account)
    m.debits.append(Entry(result["log_id"], account, actor, amt, key))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(operation, max_size=25))
def test_random_operations_keep_every_invariant(conn: Conn, ops: list[tuple[Any, ...]]) -> None:
    ids = add_users(conn, *START_ROLES)
    m = Model(roles=list(START_ROLES), total=[allocation(r) for r in START_ROLES],
              allocated=[allocation(r) for r in START_ROLES])
    for op in ops:
        step(conn, ids, m, op)
        for u in range(N):
            assert balance(conn, ids[u]) == (m.total[u], m.used[u], m.remaining(u)), op
            assert m.remaining(u) >= 0

    expected = {(ids[member], "allows no team") for member, admin in m.team.items()
                if m.limit(admin) == 0}
    found = {(user, "allows no team" if "allows no team" in problem else problem)
             for user, problem in integrity(conn) if user in ids}
    assert found == expected
