"""Deadlocks revision 0010 brought to debits that fall through to a team pool.

A debit of an account holding tracked lots (an expiry or a priority) locks the
account's balance row in credits_internal.take_from_lots() before it reads the
lots. When those lots cannot pay, the call goes on to the team pool while still
holding that lock: the own row, then the pool's. Before lots, the own account's
refusal was a conditional UPDATE that matched nothing and locked nothing, so a
debit only ever held one balance row lock. Holding two, in the order own then
pool, deadlocks with any transaction that locks them the other way round.

Each test orders the sessions deterministically: a third session holds the
member's balance row, so that the debit queues on it first (seen in
pg_blocking_pids, never slept into); the other writer then takes the pool row
and queues behind the debit. Once the third session ends, the debit gets the
own row, reaches for the pool row, and the cycle is closed. The serial outcome
of either order is a success or a refusal, never 40P01.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.support.databases import Database
from tests.support.helpers import Conn
from tests.support.sessions import Background, blocked_or_done

EXPIRES = "now() + interval '1 day'"


def attempt(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> str | None:
    """Run one statement and commit; the SQLSTATE it raised (rolled back), or None."""
    try:
        conn.execute(query, params)
    except psycopg.Error as exc:
        conn.rollback()
        return exc.sqlstate
    conn.commit()
    return None


def ordered_ids() -> tuple[str, str]:
    """Two fresh ids, the first below the second (a statement deleting both by
    primary key then reaches the first one's rows first)."""
    low, high = sorted((uuid.uuid4(), uuid.uuid4()))
    return str(low), str(high)


def test_mutual_pools_debiting_at_once_do_not_deadlock(db: Database, conn: Conn) -> None:
    """Two team admins in each other's team, each holding an expiring lot: a
    debit by each that its own account cannot pay. Serially, A1's is paid by
    A2's pool and A2's is refused (CR001) whichever runs first."""
    a1, a2 = ordered_ids()
    conn.execute("INSERT INTO users (id, role) VALUES (%s, 'team_admin'), (%s, 'team_admin')",
                 (a1, a2))
    conn.execute("SELECT add_team_member(%s, %s)", (a1, a2))
    conn.execute("SELECT add_team_member(%s, %s)", (a2, a1))
    conn.execute("SELECT debit_credits(%s, 5000)", (a1,))  # A1 keeps only its lot below
    for user in (a1, a2):
        conn.execute(f"SELECT grant_credits(%s, 10, p_expires_at => {EXPIRES})", (user,))

    with db.connect() as holder, db.connect() as one, db.connect() as two:
        holder.autocommit = one.autocommit = two.autocommit = False
        holder.execute("SELECT grant_credits(%s, 1)", (a1,))  # holds A1's balance row
        first = Background(lambda: attempt(one, "SELECT debit_credits(%s, 100)", (a1,)))
        assert blocked_or_done(conn, one.info.backend_pid, first)
        second = Background(lambda: attempt(two, "SELECT debit_credits(%s, 5500)", (a2,)))
        assert blocked_or_done(conn, two.info.backend_pid, second)
        holder.rollback()
        outcomes = (first.outcome(), second.outcome())

    assert "40P01" not in outcomes, f"deadlock: {outcomes}"
    assert outcomes == (None, "CR001"), outcomes
    assert conn.execute("SELECT * FROM verify_credit_integrity()").fetchall() == []


def test_deleting_a_team_while_its_member_debits_does_not_deadlock(db: Database,
                                                                   conn: Conn) -> None:
    """A member with an expiring lot debits more than it holds (the pool pays)
    while one DELETE removes the team admin and the member. Serially: the debit
    is paid by the pool and then both users go, or both go and the debit is
    CR005; the DELETE always succeeds."""
    admin, member = ordered_ids()
    conn.execute("INSERT INTO users (id, role) VALUES (%s, 'team_admin'), (%s, 'member')",
                 (admin, member))
    conn.execute("SELECT add_team_member(%s, %s)", (admin, member))
    conn.execute(f"SELECT grant_credits(%s, 10, p_expires_at => {EXPIRES})", (member,))

    with db.connect() as holder, db.connect() as one, db.connect() as two:
        holder.autocommit = one.autocommit = two.autocommit = False
        # Holds the member's balance row (a debit spending the lot), not its users row.
        holder.execute("SELECT debit_credits(%s, 1)", (member,))
        debit = Background(lambda: attempt(one, "SELECT debit_credits(%s, 1000)", (member,)))
        assert blocked_or_done(conn, one.info.backend_pid, debit)
        delete = Background(lambda: attempt(two, "DELETE FROM users WHERE id = ANY(%s::uuid[])",
                                            ([admin, member],)))
        assert blocked_or_done(conn, two.info.backend_pid, delete)
        holder.commit()
        debit_state, delete_state = debit.outcome(), delete.outcome()

    assert "40P01" not in (debit_state, delete_state), f"deadlock: {debit_state, delete_state}"
    assert delete_state is None, delete_state
    assert debit_state in (None, "CR005"), debit_state
    assert conn.execute("SELECT * FROM verify_credit_integrity()").fetchall() == []
