"""A role starts renewing beside openers at REPEATABLE READ and SERIALIZABLE (0012).

tests/sql/test_renewal_races.py races the operator's ``UPDATE role_credits SET
renewal_interval`` against the openers (signup, role change, grant, backfill) at READ
COMMITTED. At a snapshot level the lock 0011 takes (LOCK TABLE users, user_credits)
cannot help: the opener's snapshot was taken before the operator committed, so it
reads the role without its interval and opens the account without a period, and the
operator's trigger, which ran before the account existed, never schedules it. No
renewal ever reaches it. The contract of revision 0012:

* the operator's change needs READ COMMITTED: at REPEATABLE READ or SERIALIZABLE it
  raises CR011 (credits_db.errors.ReadCommittedRequired) and changes nothing;
* an opener locks the role row it reads FOR SHARE; at a snapshot level, if that row
  changed after its snapshot (whether it waited for the operator or the operator
  committed before it read), it gets 40001 and changes nothing; a signup records the
  40001 in credit_allocation_failures (a signup never fails because of credits) and the
  next backfill allocates the user, in a period. Retried, the opener sees the interval.

Both cases below fail on the schema of 0011 (the account has no period).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import IsolationLevel

from credits_db import errors
from tests.support.databases import Database
from tests.support.helpers import Conn
from tests.support.sessions import Background, blocked_or_done

ROLE = "renew_later"
SNAPSHOT_LEVELS = {
    "repeatable_read": IsolationLevel.REPEATABLE_READ,
    "serializable": IsolationLevel.SERIALIZABLE,
}
OPENERS = ["signup", "role_change", "grant", "backfill"]

Session = psycopg.Connection[Any]


def prepare(conn: Conn, how: str) -> str:
    """ROLE (300, one-time) and, but for a signup, the user the opener expects."""
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


def enter_role(session: Session, how: str, user: str) -> None:
    """The user enters ROLE: a signup, a role change, or a grant or backfill opening the
    account."""
    if how == "signup":
        session.execute("INSERT INTO users (id, role) VALUES (%s, %s)", (user, ROLE))
    elif how == "role_change":
        session.execute("UPDATE users SET role = %s WHERE id = %s", (ROLE, user))
    elif how == "grant":
        session.execute("SELECT grant_credits(%s, 25)", (user,))
    else:
        session.execute("SELECT backfill_user_credits()")


def schedule(session: Session) -> None:
    """The operator: ROLE starts renewing."""
    session.execute("UPDATE role_credits SET renewal_interval = '30 days' WHERE role = %s",
                    (ROLE,))


def attempt(session: Session, how: str, user: str) -> psycopg.Error | None:
    """enter_role in the session's open transaction; a failure is rolled back and returned."""
    try:
        enter_role(session, how, user)
    except psycopg.Error as exc:
        session.rollback()
        return exc
    return None


def account(conn: Conn, user: str) -> tuple[Any, ...] | None:
    """(has a period, period_allowance) of the user's account, None without one."""
    return conn.execute("SELECT period_ends_at IS NOT NULL, period_allowance"
                        " FROM user_credits WHERE user_id = %s", (user,)).fetchone()


def failure(conn: Conn, user: str) -> str | None:
    """The SQLSTATE a recorded signup allocation failure of the user names."""
    row = conn.execute("SELECT sqlstate FROM credit_allocation_failures WHERE user_id = %s",
                       (user,)).fetchone()
    return None if row is None else str(row[0])


@pytest.mark.parametrize("waits", [True, False], ids=["opener_waits", "operator_committed"])
@pytest.mark.parametrize("how", OPENERS)
@pytest.mark.parametrize("level", SNAPSHOT_LEVELS)
def test_an_opener_whose_snapshot_predates_the_change_gets_40001(
        db: Database, conn: Conn, level: str, how: str, waits: bool) -> None:
    """The opener's snapshot is taken before the operator (at READ COMMITTED) commits:
    either it then waits for the operator's row lock (observed in pg_blocking_pids), or
    the operator commits before it reads the role. Either way it gets 40001 and nothing
    changes (a signup: the user is created without an account and the 40001 recorded;
    the next backfill opens it in a period); retried, the account has a period."""
    user = prepare(conn, how)
    with db.connect(autocommit=False) as operator, db.connect(autocommit=False) as opener:
        opener.isolation_level = SNAPSHOT_LEVELS[level]
        opener.execute("SELECT count(*) FROM users")  # the snapshot
        schedule(operator)
        if waits:
            call = Background(lambda: attempt(opener, how, user))
            assert blocked_or_done(conn, opener.info.backend_pid, call), (
                "the opener does not wait for the operator's change of its role row")
            operator.commit()
            outcome = call.outcome()
        else:
            operator.commit()
            outcome = attempt(opener, how, user)
        opener.commit()

        if how == "signup":
            assert outcome is None, "a signup never fails because of credits"
            assert account(conn, user) is None, (
                "the signup opened an account from a snapshot without the role's interval:"
                f" {account(conn, user)}")
            assert failure(conn, user) == "40001"
            conn.execute("SELECT backfill_user_credits()")
            assert failure(conn, user) is None
        else:
            assert isinstance(outcome, psycopg.Error) and outcome.sqlstate == "40001", (
                f"the opener read the role from a snapshot without its interval: {outcome!r},"
                f" account {account(conn, user)}")
            if how == "role_change":
                assert account(conn, user) == (False, None)
                assert conn.execute("SELECT role FROM users WHERE id = %s",
                                    (user,)).fetchone() == ("member",)
            else:
                assert account(conn, user) is None
            opener.isolation_level = SNAPSHOT_LEVELS[level]
            assert attempt(opener, how, user) is None
            opener.commit()

    assert account(conn, user) == (True, 350 if how == "role_change" else 300), (
        "the account's role renews but it has no allowance period: no renewal will reach it")


@pytest.mark.parametrize("change", ["update", "insert"])
@pytest.mark.parametrize("level", SNAPSHOT_LEVELS)
def test_starting_a_renewal_at_a_snapshot_level_is_read_committed_required(
        db: Database, conn: Conn, level: str, change: str) -> None:
    """UPDATE of renewal_interval from NULL, or INSERT of a role with one, at REPEATABLE
    READ or SERIALIZABLE: CR011, which the package raises as ReadCommittedRequired;
    nothing changed (the role, the accounts' periods). At READ COMMITTED it works."""
    if change == "update":
        conn.execute("INSERT INTO role_credits (role, credits) VALUES (%s, 300)", (ROLE,))
    user = str(uuid.uuid4())
    conn.execute("INSERT INTO users (id, role) VALUES (%s, %s)", (user, ROLE))
    statement = ("UPDATE role_credits SET renewal_interval = '30 days' WHERE role = %s"
                 if change == "update" else
                 "INSERT INTO role_credits (role, credits, renewal_interval)"
                 " VALUES (%s, 300, '30 days')")
    with db.connect(autocommit=False) as operator:
        operator.isolation_level = SNAPSHOT_LEVELS[level]
        with pytest.raises(psycopg.Error) as raised:
            operator.execute(statement, (ROLE,))
        operator.rollback()
        assert raised.value.sqlstate == "CR011", raised.value
        translated = errors.translate(raised.value)
        assert type(translated).__name__ == "ReadCommittedRequired"
        assert isinstance(translated, errors.CreditsError)
        assert translated.sqlstate == "CR011"

        row = conn.execute("SELECT renewal_interval FROM role_credits WHERE role = %s",
                           (ROLE,)).fetchone()
        assert row == ((None,) if change == "update" else None)
        assert account(conn, user) == (False, None)

        operator.isolation_level = IsolationLevel.READ_COMMITTED
        operator.execute(statement, (ROLE,))
        operator.commit()
    assert account(conn, user) == (True, 350 if change == "insert" else 300)
