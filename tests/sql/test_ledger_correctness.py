"""The narrow paths an outside review found to mint, lose, double or steal credits (issue 13).

Each test here failed on f3bd348 (the main this work started from) and names
the item it proves. Sessions are ordered by asking the server whether one
waits on another (tests/support/sessions.py), never by sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import credits_db
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, add_users_without_credits, balance
from tests.support.sessions import Background, blocked_or_done, sqlstate
from tests.support.spending import add_member, debit, fails_cleanly, grant, integrity, refund


def allocated(conn: Conn, user: str) -> int | None:
    row = conn.execute(
        "SELECT allocated_credits FROM user_credits WHERE user_id = %s", (user,)
    ).fetchone()
    return None if row is None else int(row[0])


@pytest.fixture
def observer(db: Database) -> Iterator[Conn]:
    with db.connect() as connection:
        yield connection


def race(db: Database, observer: Conn, first_sql: str, second_sql: str, params: Any,
         *, isolation: psycopg.IsolationLevel = psycopg.IsolationLevel.READ_COMMITTED
         ) -> Any:
    """Run ``first_sql`` and hold it open; start ``second_sql``; commit the first once the
    second waits on it (or has finished); return the second's outcome (committed if it worked)."""
    with db.connect(autocommit=False) as first, db.connect(autocommit=False) as second:
        first.isolation_level = second.isolation_level = isolation
        first.execute(first_sql, params)

        def run_second() -> Any:
            cursor = second.execute(second_sql, params)
            row = cursor.fetchone() if cursor.description else None
            return None if row is None else row[0]

        call = Background(run_second)
        blocked_or_done(observer, second.info.backend_pid, call)
        first.commit()
        outcome = call.outcome()
        if isinstance(outcome, BaseException):
            second.rollback()
        else:
            second.commit()
        return outcome


# --- item 2: a role upgrade racing the backfill (or a grant opening the account) ---------


ROLE_UP = "UPDATE users SET role = 'super_admin' WHERE id = %(user)s"
BACKFILL = "SELECT backfill_user_credits()"
GRANT_OPENS = "SELECT grant_credits(%(user)s, 5)"


@pytest.mark.parametrize(("first", "second"), [
    (ROLE_UP, BACKFILL), (BACKFILL, ROLE_UP), (ROLE_UP, GRANT_OPENS), (GRANT_OPENS, ROLE_UP),
])
def test_role_upgrade_racing_an_allocation_is_never_lost(
    db: Database, conn: Conn, observer: Conn, first: str, second: str
) -> None:
    [user] = add_users_without_credits(conn, "member")
    outcome = race(db, observer, first, second, {"user": user})
    assert not isinstance(outcome, BaseException), outcome
    granted = 5 if GRANT_OPENS in (first, second) else 0
    assert balance(conn, user) == (10000 + granted, 0, 10000 + granted)
    assert allocated(conn, user) == 10000
    assert integrity(conn) == []


def test_role_change_opens_a_missing_account_at_the_new_role(conn: Conn) -> None:
    [user] = add_users_without_credits(conn, "member")
    conn.execute("UPDATE users SET role = 'team_admin' WHERE id = %s", (user,))
    assert balance(conn, user) == (5000, 0, 5000)
    sources = conn.execute(
        "SELECT source, amount FROM credit_usage_log WHERE user_id = %s", (user,)
    ).fetchall()
    assert sources == [("backfill", 5000)]
    assert conn.execute(BACKFILL).fetchone()[0]["users_backfilled"] == 0  # type: ignore[index]


# --- item 3: a user deleted while a function waits -------------------------------------


DELETE = "DELETE FROM users WHERE id = %(user)s"


def test_backfill_skips_a_user_deleted_under_it_and_allocates_everyone_else(
    db: Database, conn: Conn, observer: Conn
) -> None:
    doomed, *others = add_users_without_credits(conn, "member", "admin", "team_admin")
    report = race(db, observer, DELETE, BACKFILL, {"user": doomed})
    assert not isinstance(report, BaseException), report
    assert report["users_backfilled"] == 2 and report["users_skipped"] == 1
    assert [balance(conn, u) for u in others] == [(1000, 0, 1000), (5000, 0, 5000)]


def test_batched_walk_skips_a_user_deleted_under_it(
    db: Database, conn: Conn, observer: Conn
) -> None:
    doomed, other = add_users_without_credits(conn, "member", "admin")
    report = race(db, observer, DELETE, "SELECT backfill_user_credits_batch(NULL, 10)",
                  {"user": doomed})
    assert not isinstance(report, BaseException), report
    assert report["users_backfilled"] == 1 and report["users_skipped"] == 1
    assert balance(conn, other) == (1000, 0, 1000)


@pytest.mark.parametrize("call", [
    "SELECT grant_credits(%(user)s, 5)",
    "SELECT add_team_member(%(admin)s, %(user)s)",
    "SELECT debit_credits(%(user)s, 5, 'usage', NULL, 'k')",
])
def test_a_user_deleted_while_a_call_waits_is_cr005(
    db: Database, conn: Conn, observer: Conn, call: str
) -> None:
    admin, user = add_users(conn, "team_admin", "member")
    outcome = race(db, observer, DELETE, call, {"user": user, "admin": admin})
    assert sqlstate(outcome) == "CR005", outcome


def test_python_api_raises_unknown_user_for_a_user_deleted_meanwhile(
    db: Database, conn: Conn, observer: Conn
) -> None:
    [user] = add_users_without_credits(conn, "member")
    with db.connect(autocommit=False) as deleting, db.connect() as granting:
        deleting.execute(DELETE, {"user": user})
        call = Background(lambda: credits_db.grant(granting, user, 5))
        assert blocked_or_done(observer, granting.info.backend_pid, call)
        deleting.commit()
        assert isinstance(call.outcome(), credits_db.UnknownUser)


# --- item 4: one key debited twice at REPEATABLE READ / SERIALIZABLE -------------------


@pytest.mark.parametrize("isolation", [psycopg.IsolationLevel.REPEATABLE_READ,
                                       psycopg.IsolationLevel.SERIALIZABLE],
                         ids=["repeatable read", "serializable"])
def test_a_keyed_retry_at_a_snapshot_level_replays_or_retries_never_debits_twice(
    db: Database, conn: Conn, observer: Conn, isolation: psycopg.IsolationLevel
) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    debit(conn, member, 350)
    keyed = "SELECT debit_credits(%s, 100, 'usage', NULL, 'K1')"
    with db.connect(autocommit=False) as a, db.connect(autocommit=False) as b:
        b.isolation_level = isolation
        assert a.execute(keyed, (member,)).fetchone()[0]["from_team_pool"] is True  # type: ignore[index]
        grant(conn, member, 500)
        call = Background(lambda: b.execute(keyed, (member,)).fetchone())
        assert blocked_or_done(observer, b.info.backend_pid, call)
        a.commit()
        outcome = call.outcome()
        assert sqlstate(outcome) == "40001", outcome
        b.rollback()
        retried = b.execute(keyed, (member,)).fetchone()
        b.commit()
    assert retried is not None and retried[0]["replayed"] is True
    assert balance(conn, member) == (850, 350, 500)
    assert balance(conn, admin) == (5000, 100, 4900)
    assert integrity(conn) == []


# --- item 5: a re-created user id starts a fresh account -------------------------------


def test_a_re_created_user_id_starts_a_fresh_account(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    old = debit(conn, user, 300, idempotency_key="order-1")
    conn.execute("DELETE FROM users WHERE id = %s", (user,))
    conn.execute("INSERT INTO users (id, role) VALUES (%s, 'member')", (user,))
    assert balance(conn, user) == (350, 0, 350)
    assert integrity(conn) == []
    again = debit(conn, user, 300, idempotency_key="order-1")
    assert again["replayed"] is False and again["log_id"] != old["log_id"]
    assert balance(conn, user) == (350, 300, 50)
    fails_cleanly(conn, "CR005", "SELECT refund_credits(%s)", (old["log_id"],))
    refund(conn, again["log_id"])
    assert balance(conn, user) == (650, 300, 350)
    assert integrity(conn) == []
    kept = conn.execute("SELECT count(*) FROM credit_usage_log WHERE user_id = %s",
                        (user,)).fetchone()
    assert kept == (5,)  # both signups, both debits and the refund: the audit trail stays


# --- item 6: role churn never mints --------------------------------------------------


def test_role_churn_mints_nothing(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    for role in ["team_admin", "member"] * 3:
        conn.execute("UPDATE users SET role = %s WHERE id = %s", (role, user))
    assert balance(conn, user) == (5000, 0, 5000)
    assert allocated(conn, user) == 5000
    conn.execute("UPDATE users SET role = 'super_admin' WHERE id = %s", (user,))
    assert balance(conn, user) == (10000, 0, 10000)
    changes = conn.execute(
        "SELECT amount FROM credit_usage_log WHERE user_id = %s AND source = 'role_change'"
        " ORDER BY id", (user,)
    ).fetchall()
    assert changes == [(4650,), (5000,)]
    assert integrity(conn) == []


# --- item 8: keys are the caller's -------------------------------------------------


def test_a_members_pool_key_neither_blocks_nor_reveals_the_admins(conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    debit(conn, member, 350)
    # The member takes 'k' first; the admin's own 'k' is untouched by it.
    by_member = debit(conn, member, 400, idempotency_key="k")
    by_admin = debit(conn, admin, 10, idempotency_key="k")
    assert by_member["from_team_pool"] is True and by_admin["replayed"] is False
    # The admin's key 'a' is invisible to the member: a pool-sized debit with it is
    # a plain first debit of the member, not a CR007 that would say it exists.
    debit(conn, admin, 20, idempotency_key="a")
    probe = debit(conn, member, 4000, idempotency_key="a")
    assert probe["replayed"] is False and probe["from_team_pool"] is True
    # Replay and CR007 are unchanged for the key's owner.
    assert debit(conn, member, 400, idempotency_key="k") == {**by_member, "replayed": True}
    fails_cleanly(conn, "CR007", "SELECT debit_credits(%s, 401, p_idempotency_key => 'k')",
                  (member,))
    assert balance(conn, admin) == (5000, 4430, 570)
    assert integrity(conn) == []


def test_a_users_debit_key_cannot_take_a_grant_key(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    debit(conn, user, 10, idempotency_key="welcome-bonus")
    granted = grant(conn, user, 100, idempotency_key="welcome-bonus")
    assert granted["replayed"] is False
    assert grant(conn, user, 100, idempotency_key="welcome-bonus") == {**granted, "replayed": True}
    assert balance(conn, user) == (450, 10, 440)


def test_reserved_sources_cannot_be_granted(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    for source in ["signup", "backfill", "role_change", "refund"]:
        fails_cleanly(conn, "22023", "SELECT grant_credits(%s, 5, %s)", (user, source))


# --- found by the interleaving matrix, at REPEATABLE READ ------------------------------


def test_two_adds_at_repeatable_read_cannot_both_take_the_last_seat(
    db: Database, conn: Conn, observer: Conn
) -> None:
    admin, *members, late = add_users(conn, "team_admin", "member", "member", "member",
                                      "member", "member")
    for member in members[:3]:
        add_member(conn, admin, member)
    with db.connect(autocommit=False) as first, db.connect(autocommit=False) as second:
        first.isolation_level = second.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        first.execute("SELECT add_team_member(%s, %s)", (admin, members[3]))
        call = Background(lambda: second.execute("SELECT add_team_member(%s, %s)",
                                                 (admin, late)))
        assert blocked_or_done(observer, second.info.backend_pid, call)
        first.commit()
        assert sqlstate(call.outcome()) == "40001"
        second.rollback()
    seats = conn.execute("SELECT seat FROM team_credit_sharing WHERE team_admin_id = %s"
                         " ORDER BY seat", (admin,)).fetchall()
    assert seats == [(1,), (2,), (3,), (4,)]
    fails_cleanly(conn, "CR002", "SELECT add_team_member(%s, %s)", (admin, late))


def test_a_user_deleted_at_repeatable_read_after_their_keyed_debit_takes_its_key_along(
    db: Database, conn: Conn, observer: Conn
) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    debit(conn, member, 350)
    keyed = "SELECT debit_credits(%s, 100, p_idempotency_key => 'K1')"
    with db.connect(autocommit=False) as paying, db.connect(autocommit=False) as deleting:
        deleting.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        deleting.execute("SELECT 1")  # the deleting transaction's snapshot, before the debit
        paying.execute(keyed, (member,))
        call = Background(lambda: deleting.execute(DELETE, {"user": member}))
        assert blocked_or_done(observer, deleting.info.backend_pid, call)
        paying.commit()
        assert sqlstate(call.outcome()) == "40001"
        deleting.rollback()
    conn.execute(DELETE, {"user": member})
    assert conn.execute("SELECT count(*) FROM credit_idempotency_keys WHERE owner_user_id = %s",
                        (member,)).fetchone() == (0,)
    conn.execute("INSERT INTO users (id, role) VALUES (%s, 'member')", (member,))
    assert debit(conn, member, 100, idempotency_key="K1")["replayed"] is False
