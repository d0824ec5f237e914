"""An operator giving a role a renewal_interval races the accounts that enter the role.

``UPDATE role_credits SET renewal_interval = ...`` schedules the role's accounts in a
statement trigger (credits_internal.schedule_renewals, sql/030): it records each
account's current period, so that renew_allowances() renews it at that period's end.
An account opened in the role, or moved into it, by a transaction running beside the
operator's must not be lost: without an order between them its opener (signup, role
change, grant, backfill) reads role_credits before the UPDATE commits (no interval: no
period), the trigger cannot see the uncommitted account, both commit, and no renewal
ever reaches it.

The order (0012): every opener locks the role rows it reads FOR SHARE first
(credits_internal.lock_allocation_roles, sql/032), which the UPDATE's row lock
conflicts with. At READ COMMITTED the second to start waits for the first, and reads
what it committed. The operator's change needs READ COMMITTED (CR014 at a snapshot
level, nothing changed). An opener at REPEATABLE READ or SERIALIZABLE that waited for
the change, or whose snapshot predates it, gets 40001 (a signup records it as an
allocation failure instead, and the next backfill allocates the user).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import IsolationLevel

from tests.support.databases import Database
from tests.support.helpers import Conn
from tests.support.sessions import Background, blocked_or_done, sqlstate

ROLE = "renew_later"
LEVELS = {
    "read_committed": IsolationLevel.READ_COMMITTED,
    "repeatable_read": IsolationLevel.REPEATABLE_READ,
    "serializable": IsolationLevel.SERIALIZABLE,
}

Session = psycopg.Connection[Any]


def enter_role(conn: Session, how: str, user: str) -> None:
    """The user enters ROLE: a signup, a role change, or a grant or backfill opening the
    account."""
    if how == "signup":
        conn.execute("INSERT INTO users (id, role) VALUES (%s, %s)", (user, ROLE))
    elif how == "role_change":
        conn.execute("UPDATE users SET role = %s WHERE id = %s", (ROLE, user))
    elif how == "grant":
        conn.execute("SELECT grant_credits(%s, 25)", (user,))
    else:
        conn.execute("SELECT backfill_user_credits()")


def schedule(conn: Session) -> None:
    conn.execute("UPDATE role_credits SET renewal_interval = '30 days' WHERE role = %s", (ROLE,))


def prepare(conn: Conn, how: str) -> str:
    """ROLE without an interval, and the user as the opener expects to find it."""
    conn.execute("INSERT INTO role_credits (role, credits, rollover_cap) VALUES (%s, 300, 0)",
                 (ROLE,))
    user = str(uuid.uuid4())
    if how == "role_change":
        conn.execute("INSERT INTO users (id, role) VALUES (%s, 'member')", (user,))
    elif how in ("grant", "backfill"):
        # As the host had it before credits-db: no trigger, so no balance row.
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("INSERT INTO users (id, role) VALUES (%s, %s)", (user, ROLE))
    return user


def run_race(db: Database, conn: Conn, how: str, user: str, *, operator_starts: bool,
             level: IsolationLevel) -> tuple[Any, Any]:
    """The operator (at READ COMMITTED) and the opener (at ``level``) each in a
    transaction; the second to start may wait for the first (then the first commits
    first), or it finishes and commits first. Returns each side's outcome (None or its
    exception); a failed side is rolled back."""
    outcomes: dict[str, Any] = {}
    with db.connect(autocommit=False) as operator, db.connect(autocommit=False) as other:
        other.isolation_level = level
        sides = {"operator": (operator, schedule),
                 "other": (other, lambda s: enter_role(s, how, user))}
        first, second = ("operator", "other") if operator_starts else ("other", "operator")

        def attempt(name: str) -> Any:
            session, work = sides[name]
            try:
                work(session)
            except psycopg.Error as exc:
                session.rollback()
                return exc
            return None

        outcomes[first] = attempt(first)
        call = Background(lambda: attempt(second))
        if blocked_or_done(conn, sides[second][0].info.backend_pid, call):
            sides[first][0].commit()
            outcomes[second] = call.outcome()
            sides[second][0].commit()
        else:
            outcomes[second] = call.outcome()
            sides[second][0].commit()
            sides[first][0].commit()
    return outcomes["operator"], outcomes["other"]


def period(conn: Conn, user: str) -> tuple[Any, ...] | None:
    return conn.execute("SELECT period_ends_at IS NOT NULL, period_allowance"
                        " FROM user_credits WHERE user_id = %s", (user,)).fetchone()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("operator_starts", [True, False])
@pytest.mark.parametrize("how", ["signup", "role_change", "grant", "backfill"])
def test_an_account_entering_the_role_while_it_starts_renewing_is_scheduled(
        db: Database, conn: Conn, how: str, operator_starts: bool, level: str) -> None:
    """The operator's change commits. The opener commits too, or (at a snapshot level)
    fails with 40001 and its retry succeeds; a signup's 40001 is an allocation failure
    the backfill repairs. Either way the account renews: it has a period."""
    user = prepare(conn, how)
    operator, other = run_race(db, conn, how, user, operator_starts=operator_starts,
                               level=LEVELS[level])
    assert operator is None
    if other is not None:
        assert level != "read_committed", f"at READ COMMITTED the opener failed: {other!r}"
        assert sqlstate(other) == "40001", other
        with db.connect() as retry:
            enter_role(retry, how, user)
    if how == "signup" and period(conn, user) is None:
        assert level != "read_committed", "at READ COMMITTED the signup was not allocated"
        failure = conn.execute("SELECT sqlstate FROM credit_allocation_failures"
                               " WHERE user_id = %s", (user,)).fetchone()
        assert failure == ("40001",)
        conn.execute("SELECT backfill_user_credits()")
    assert period(conn, user) == (True, 350 if how == "role_change" else 300), (
        "the account's role renews but it has no allowance period (period_ends_at NULL):"
        " no renewal will ever reach it")


@pytest.mark.parametrize("level", ["repeatable_read", "serializable"])
@pytest.mark.parametrize("change", ["update", "insert"])
def test_a_role_starts_renewing_only_at_read_committed(
        db: Database, conn: Conn, level: str, change: str) -> None:
    """At a snapshot level the trigger could not see what commits beside it: CR014, and
    nothing changes."""
    conn.execute("INSERT INTO users (id, role) VALUES (%s, 'member')", (str(uuid.uuid4()),))
    before = conn.execute("SELECT role, credits, renewal_interval FROM role_credits"
                          " ORDER BY role").fetchall()
    with db.connect(autocommit=False) as operator:
        operator.isolation_level = LEVELS[level]
        statement = (
            "UPDATE role_credits SET renewal_interval = '1 month' WHERE role = 'member'"
            if change == "update" else
            "INSERT INTO role_credits (role, credits, renewal_interval)"
            " VALUES ('monthly', 100, '1 month')")
        with pytest.raises(psycopg.Error) as raised:
            operator.execute(statement)
        operator.rollback()
    assert raised.value.sqlstate == "CR014"
    assert "READ COMMITTED" in str(raised.value)
    assert conn.execute("SELECT role, credits, renewal_interval FROM role_credits"
                        " ORDER BY role").fetchall() == before
    assert conn.execute("SELECT count(*) FROM user_credits WHERE period_ends_at IS NOT NULL"
                        ).fetchone() == (0,)


def test_other_changes_of_role_credits_run_at_any_level(db: Database, conn: Conn) -> None:
    """Only starting a renewal needs READ COMMITTED: a new amount, a new interval of a
    role that renews already, or a role without one commit at REPEATABLE READ."""
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month' WHERE role = 'admin'")
    with db.connect(autocommit=False) as operator:
        operator.isolation_level = IsolationLevel.REPEATABLE_READ
        operator.execute("UPDATE role_credits SET credits = 400 WHERE role = 'member'")
        operator.execute("UPDATE role_credits SET renewal_interval = '2 months'"
                         " WHERE role = 'admin'")
        operator.execute("INSERT INTO role_credits (role, credits) VALUES ('once', 10)")
        operator.commit()
    assert conn.execute("SELECT credits FROM role_credits WHERE role = 'member'"
                        ).fetchone() == (400,)


def test_debits_of_other_roles_do_not_wait_for_an_operator_starting_a_renewal(
        db: Database, conn: Conn) -> None:
    """The operator's UPDATE locks the role's rows and its accounts' balance rows (their
    period is recorded), nothing else: a debit of an account in another role runs while
    the operator's transaction is open, and one of an account in the role waits for it."""
    member, admin = str(uuid.uuid4()), str(uuid.uuid4())
    conn.execute("INSERT INTO users (id, role) VALUES (%s, 'member'), (%s, 'admin')",
                 (member, admin))
    with db.connect(autocommit=False) as operator, db.connect() as debitor:
        operator.execute("UPDATE role_credits SET renewal_interval = '1 month'"
                         " WHERE role = 'member'")
        other_role = Background(lambda: debitor.execute("SELECT debit_credits(%s, 10)",
                                                        (admin,)))
        assert not blocked_or_done(conn, debitor.info.backend_pid, other_role), (
            "a debit of an account in another role waited for the operator")
        assert not isinstance(other_role.outcome(), Exception)
        in_role = Background(lambda: debitor.execute("SELECT debit_credits(%s, 10)",
                                                     (member,)))
        assert blocked_or_done(conn, debitor.info.backend_pid, in_role)
        operator.commit()
        assert not isinstance(in_role.outcome(), Exception)
    assert conn.execute("SELECT remaining_credits, period_ends_at IS NOT NULL"
                        " FROM user_credits WHERE user_id = %s", (member,)).fetchone() == (340, True)
    assert conn.execute("SELECT remaining_credits FROM user_credits WHERE user_id = %s",
                        (admin,)).fetchone() == (990,)
