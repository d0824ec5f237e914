"""Lots (revision 0010): every credit is a lot; debits spend tracked lots by priority,
soonest expiry, age; a lapsed lot is never spent; refunds give back to the lots they came
from; expire_credits() sweeps; get_credit_lots() and get_credit_balance() show it all."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
import pytest

from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, add_users_without_credits
from tests.support.security import acting, one
from tests.support.spending import (
    add_member,
    credit_balance,
    debit,
    fails_cleanly,
    grant,
    integrity,
    refund,
    run_together,
)


def lots(conn: Conn, user: str) -> list[dict[str, Any]]:
    return one(conn, "SELECT get_credit_lots(%s)", (user,))  # type: ignore[no-any-return]


def expiring_grant(conn: Conn, user: str, amount: int, days: float = 30,
                   **kwargs: Any) -> dict[str, Any]:
    expires = one(conn, "SELECT now() + %s * interval '1 day'", (days,))
    return grant(conn, user, amount, expires_at=expires, **kwargs)


def lot_of(conn: Conn, entry: dict[str, Any]) -> int:
    return one(conn, "SELECT id FROM credit_lots WHERE log_id = %s",  # type: ignore[no-any-return]
               (entry["log_id"],))


def lapse(conn: Conn, lot_id: int) -> None:
    """Time passes for one lot: its expiry moves into the past."""
    conn.execute("UPDATE credit_lots SET expires_at = now() - interval '1 second' WHERE id = %s",
                 (lot_id,))


def takes(conn: Conn, entry: dict[str, Any]) -> dict[int, int]:
    return dict(conn.execute("SELECT lot_id, amount FROM credit_lot_takes WHERE log_id = %s",
                             (entry["log_id"],)).fetchall())


def expire(conn: Conn, **kwargs: Any) -> dict[str, Any]:
    names = ", ".join(f"p_{name} => %({name})s" for name in kwargs)
    return one(conn, f"SELECT expire_credits({names})", kwargs)  # type: ignore[no-any-return]


# --- every credit is a lot ---------------------------------------------------------------


def test_every_allocation_and_grant_is_a_lot(conn: Conn) -> None:
    (member,) = add_users(conn, "member")
    (waiting,) = add_users_without_credits(conn, "admin")
    conn.execute("SELECT backfill_user_credits()")
    granted = grant(conn, member, 40)
    conn.execute("UPDATE users SET role = 'super_admin' WHERE id = %s", (member,))
    rows = conn.execute(
        "SELECT l.user_id::text, l.source, l.amount, l.log_id = e.id, e.source, l.tracked"
        " FROM credit_lots l JOIN credit_usage_log e ON e.id = l.log_id ORDER BY l.id").fetchall()
    assert rows == [(member, "signup", 350, True, "signup", False),
                    (waiting, "backfill", 1000, True, "backfill", False),
                    (member, "admin_grant", 40, True, "admin_grant", False),
                    (member, "role_change", 9650, True, "role_change", False)]
    assert granted["log_id"] in {lot["log_id"] for lot in lots(conn, member)}
    assert integrity(conn) == []


def test_an_account_without_tracked_lots_is_debited_without_touching_lots(conn: Conn) -> None:
    (member,) = add_users(conn, "member")
    grant(conn, member, 50)
    before = conn.execute("SELECT * FROM credit_lots ORDER BY id").fetchall()
    entry = debit(conn, member, 370)
    assert conn.execute("SELECT * FROM credit_lots ORDER BY id").fetchall() == before
    assert takes(conn, entry) == {}
    # Untracked lots are spent oldest first: the signup lot is gone, 30 of the grant remain.
    assert [(lot["source"], lot["remaining"], lot["state"]) for lot in lots(conn, member)] == [
        ("signup", 0, "spent"), ("admin_grant", 30, "open")]
    assert integrity(conn) == []


# --- spending order ------------------------------------------------------------------------


def test_debits_spend_by_priority_then_soonest_expiry_then_age(conn: Conn) -> None:
    (user,) = add_users(conn, "member")  # 350 untracked, priority 50, no expiry
    later = lot_of(conn, expiring_grant(conn, user, 100, days=20))
    sooner = lot_of(conn, expiring_grant(conn, user, 100, days=10))
    sooner_too = lot_of(conn, expiring_grant(conn, user, 100, days=10))
    first = lot_of(conn, grant(conn, user, 30, priority=10))
    last = lot_of(conn, grant(conn, user, 70, priority=90))
    spent = debit(conn, user, 180)
    assert takes(conn, spent) == {first: 30, sooner: 100, sooner_too: 50}
    spent = debit(conn, user, 500)
    assert takes(conn, spent) == {sooner_too: 50, later: 100}  # and 350 untracked
    spent = debit(conn, user, 60)
    assert takes(conn, spent) == {last: 60}
    remaining = {lot["lot_id"]: lot["remaining"] for lot in lots(conn, user)}
    assert remaining[last] == 10 and sum(remaining.values()) == 10
    assert integrity(conn) == []


def test_the_pool_is_debited_from_its_lots_by_the_same_rule(conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    pool_lot = lot_of(conn, expiring_grant(conn, admin, 500, days=5))
    spent = debit(conn, member, 400)  # more than the member's own 350
    assert spent["account_user_id"] == admin and spent["from_team_pool"] is True
    assert takes(conn, spent) == {pool_lot: 400}
    assert one(conn, "SELECT actor_user_id::text FROM credit_usage_log WHERE id = %s",
               (spent["log_id"],)) == member
    assert integrity(conn) == []


def test_a_keyed_debit_of_an_account_with_lots_replays(conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    expiring_grant(conn, user, 100)
    first = debit(conn, user, 120, idempotency_key="k")
    again = debit(conn, user, 120, idempotency_key="k")
    assert again == {**first, "replayed": True}
    assert one(conn, "SELECT count(*) FROM credit_lot_takes") == 1
    assert integrity(conn) == []


# --- expiry -----------------------------------------------------------------------------------


def test_a_lapsed_lot_is_never_spent_even_before_any_sweep(conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    lot = lot_of(conn, expiring_grant(conn, user, 100))
    debit(conn, user, 20)  # from the lot: it expires sooner than the untracked 350
    lapse(conn, lot)
    error = fails_cleanly(conn, "CR001", "SELECT debit_credits(%s, 351)", (user,))
    assert error.diag.message_detail == \
        "own remaining 430 (spendable 350); team pool none (not in a team)"
    balance = credit_balance(conn, user)
    assert balance["spendable"] == 350
    assert balance["own"]["remaining_credits"] == 430
    assert balance["own"]["spendable_credits"] == 350
    assert [lot_["state"] for lot_ in lots(conn, user)] == ["lapsed", "open"]
    debit(conn, user, 350)
    assert integrity(conn) == []


def test_the_balance_says_what_expires_next_and_when(conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    assert credit_balance(conn, user)["own"]["next_expiry"] is None
    expires = one(conn, "SELECT now() + interval '3 days'")
    grant(conn, user, 100, expires_at=expires)
    grant(conn, user, 40, expires_at=expires)  # the same expiry: counted together
    expiring_grant(conn, user, 60, days=9)
    debit(conn, user, 30)
    following = credit_balance(conn, user)["own"]["next_expiry"]
    # Compared as times: PostgreSQL drops trailing zeros of the fraction, isoformat() not.
    assert following["credits"] == 110
    assert datetime.fromisoformat(following["expires_at"]) == expires
    conn.execute("UPDATE credit_lots SET expires_at = now() - interval '1 second'"
                 " WHERE expires_at = %s", (expires,))
    assert credit_balance(conn, user)["own"]["next_expiry"]["credits"] == 60


def test_the_sweep_writes_one_expire_entry_per_lot_and_is_idempotent(conn: Conn) -> None:
    users = add_users(conn, "member", "member", "admin")
    lapsed = [lot_of(conn, expiring_grant(conn, u, 10 * (i + 1))) for i, u in enumerate(users)]
    kept = lot_of(conn, expiring_grant(conn, users[0], 5))
    debit(conn, users[0], 4)  # from the first lot (sooner than the untracked credits)
    for lot in lapsed:
        lapse(conn, lot)
    first = expire(conn, limit=2)
    assert (first["lots_expired"], first["credits_expired"]) == (2, 6 + 20)
    rest = expire(conn)
    assert (rest["lots_expired"], rest["credits_expired"], rest["accounts"]) == (1, 30, 1)
    assert expire(conn)["lots_expired"] == 0
    entries = conn.execute("SELECT lot_id, amount, source FROM credit_usage_log"
                           " WHERE type = 'expire' ORDER BY lot_id").fetchall()
    assert entries == [(lapsed[0], -6, "expiry"), (lapsed[1], -20, "expiry"),
                       (lapsed[2], -30, "expiry")]
    assert one(conn, "SELECT expired FROM credit_lots WHERE id = %s", (kept,)) == 0
    assert credit_balance(conn, users[0])["own"]["remaining_credits"] == 350 + 5
    assert one(conn, "SELECT tracked_credits FROM user_credits WHERE user_id = %s",
               (users[0],)) == 5
    assert integrity(conn) == []


def test_the_sweep_may_run_as_of_a_later_time(conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    expiring_grant(conn, user, 100, days=2)
    assert expire(conn)["lots_expired"] == 0
    assert expire(conn, as_of=one(conn, "SELECT now() + interval '1 day'"))["lots_expired"] == 0
    report = expire(conn, as_of=one(conn, "SELECT now() + interval '3 days'"))
    assert (report["lots_expired"], report["credits_expired"]) == (1, 100)
    assert integrity(conn) == []


def test_the_sweep_skips_an_account_a_transaction_holds_and_never_waits(
        conn: Conn, db: Database) -> None:
    busy, idle = add_users(conn, "member", "member")
    for user in (busy, idle):
        lapse(conn, lot_of(conn, expiring_grant(conn, user, 100)))
    with db.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM user_credits WHERE user_id = %s FOR NO KEY UPDATE", (busy,))
        report = expire(conn)  # returns: SKIP LOCKED never waits for the holder
        assert (report["lots_expired"], report["accounts_skipped"]) == (1, 1)
        holder.execute("ROLLBACK")
    report = expire(conn)
    assert (report["lots_expired"], report["accounts_skipped"]) == (1, 0)
    assert integrity(conn) == []


# --- refunds --------------------------------------------------------------------------------


def test_a_refund_gives_back_to_the_lots_the_debit_took_from(conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    a = lot_of(conn, expiring_grant(conn, user, 100, days=5))
    b = lot_of(conn, grant(conn, user, 50, priority=20))
    spent = debit(conn, user, 400)
    assert takes(conn, spent) == {b: 50, a: 100}
    refund(conn, spent["log_id"])
    remaining = {lot["lot_id"]: lot["remaining"] for lot in lots(conn, user)}
    assert remaining[a] == 100 and remaining[b] == 50
    assert credit_balance(conn, user)["own"]["remaining_credits"] == 500
    assert integrity(conn) == []


def test_credits_refunded_onto_a_lapsed_lot_expire_at_once(conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    lot = lot_of(conn, expiring_grant(conn, user, 100))
    spent = debit(conn, user, 150)  # 100 from the lot, 50 untracked
    lapse(conn, lot)
    refunded = refund(conn, spent["log_id"])
    assert refunded["remaining_credits"] == 350  # the 50 untracked came back, the 100 expired
    entries = conn.execute(
        "SELECT type, amount, lot_id FROM credit_usage_log WHERE id >= %s ORDER BY id",
        (refunded["log_id"],)).fetchall()
    assert entries == [("credit", 150, None), ("expire", -100, lot)]
    assert conn.execute("SELECT taken, expired FROM credit_lots WHERE id = %s",
                        (lot,)).fetchone() == (0, 100)
    assert expire(conn)["lots_expired"] == 0  # nothing left for the sweep
    assert integrity(conn) == []


def test_a_debit_made_before_lots_is_refunded_into_the_untracked_credits(conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    spent = debit(conn, user, 300)
    expiring_grant(conn, user, 100)
    refund(conn, spent["log_id"])
    assert credit_balance(conn, user)["own"]["remaining_credits"] == 450
    assert one(conn, "SELECT tracked_credits FROM user_credits WHERE user_id = %s", (user,)) == 100
    assert integrity(conn) == []


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(("expires", "priority"), [
    ("now() - interval '1 second'", None),
    ("statement_timestamp()", None),
    ("'infinity'", None),
    (None, -1),
    (None, 101),
])
def test_a_grant_with_a_past_expiry_or_a_priority_out_of_range_is_refused(
        conn: Conn, expires: str | None, priority: int | None) -> None:
    (user,) = add_users(conn, "member")
    error = fails_cleanly(
        conn, "22023",
        f"SELECT grant_credits(%s, 10, p_expires_at => {expires or 'NULL'}, p_priority => %s)",
        (user, priority))
    assert ("p_expires_at" if expires else "p_priority") in str(error)


def test_a_grant_key_replays_only_with_the_same_expiry_and_priority(conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    expires = one(conn, "SELECT now() + interval '1 day'")
    first = grant(conn, user, 10, idempotency_key="g", expires_at=expires)
    assert grant(conn, user, 10, idempotency_key="g", expires_at=expires) == \
        {**first, "replayed": True}
    fails_cleanly(conn, "CR007", "SELECT grant_credits(%s, 10, p_idempotency_key => 'g')", (user,))
    fails_cleanly(conn, "CR007", "SELECT grant_credits(%s, 10, p_idempotency_key => 'g',"
                  " p_expires_at => %s, p_priority => 7)", (user, expires))


def test_a_replay_after_the_expiry_has_passed_still_replays(conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    expires = one(conn, "SELECT now() + interval '1 day'")
    first = grant(conn, user, 10, idempotency_key="g", expires_at=expires)
    conn.execute("UPDATE credit_lots SET expires_at = now() - interval '1 day'")
    lapsed_at = one(conn, "SELECT expires_at FROM credit_lots WHERE log_id = %s",
                    (first["log_id"],))
    assert grant(conn, user, 10, idempotency_key="g", expires_at=lapsed_at)["replayed"] is True


@pytest.mark.parametrize(("call", "sqlstate"), [
    ("SELECT expire_credits(NULL)", "22004"),
    ("SELECT expire_credits(now(), 0)", "22023"),
    ("SELECT get_credit_lots(NULL)", "CR005"),
    ("SELECT get_credit_lots(gen_random_uuid())", "CR005"),
])
def test_bad_arguments_of_the_lot_functions(conn: Conn, call: str, sqlstate: str) -> None:
    add_users(conn, "member")
    fails_cleanly(conn, sqlstate, call)


# --- who sees what -----------------------------------------------------------------------------


def test_a_credits_user_reads_its_own_and_its_pools_lots_only(conn: Conn) -> None:
    admin, member, outsider = add_users(conn, "team_admin", "member", "member")
    add_member(conn, admin, member)
    expiring_grant(conn, admin, 100)
    debit(conn, member, 5000)  # the pool's untracked 5000... after the lot's 100
    expiring_grant(conn, outsider, 100)
    debit(conn, outsider, 10)
    with acting(conn, "credits_user", member):
        owners = {r[0] for r in conn.execute("SELECT user_id::text FROM credit_lots")}
        assert owners == {admin, member}
        assert one(conn, "SELECT count(*) FROM credit_lot_takes") == 1
        assert len(lots(conn, member)) == 1
        with pytest.raises(psycopg.Error) as caught:
            lots(conn, admin)
        assert caught.value.sqlstate == "42501"
    with acting(conn, "credits_user", member):
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SELECT expire_credits()")
        assert caught.value.sqlstate == "42501"


# --- the integrity check knows the lots ----------------------------------------------------------


@pytest.mark.parametrize(("corruption", "problem"), [
    ("UPDATE credit_lots SET taken = taken - 1 WHERE tracked AND taken > 0",
     "taken by debits not refunded"),
    ("UPDATE user_credits SET tracked_credits = tracked_credits - 1 WHERE tracked_credits > 0",
     "what its tracked lots hold"),
    ("UPDATE credit_lots SET expired = expired + 1 WHERE tracked AND taken < amount - expired",
     "its expiry entries"),
    ("UPDATE credit_lots SET amount = amount + 1 WHERE NOT tracked",
     "is not a credit of"),
    ("DELETE FROM credit_lots WHERE NOT tracked",
     "exceed its untracked lots"),
])
def test_verify_reports_lots_that_disagree_with_the_ledger(conn: Conn, corruption: str,
                                                           problem: str) -> None:
    (user,) = add_users(conn, "member")
    expiring_grant(conn, user, 100)
    debit(conn, user, 40)
    assert integrity(conn) == []
    conn.execute(corruption)
    assert any(problem in text for _, text in integrity(conn)), integrity(conn)


# --- concurrency ------------------------------------------------------------------------------------


def test_concurrent_debits_of_an_account_with_lots_never_overdraw(conn: Conn, db: Database) -> None:
    (user,) = add_users(conn, "member")
    expiring_grant(conn, user, 50)
    sessions = [db.connect() for _ in range(8)]
    try:
        def spend(i: int) -> dict[str, Any]:
            return debit(sessions[i], user, 100)
        results = run_together(8, spend)
    finally:
        for session in sessions:
            session.close()
    done = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, psycopg.Error)]
    assert len(done) == 4 and all(r.sqlstate == "CR001" for r in refused)
    assert credit_balance(conn, user)["own"]["remaining_credits"] == 0
    assert integrity(conn) == []


def test_a_limited_sweep_moves_past_a_busy_account(conn: Conn, db: Database) -> None:
    busy, idle = add_users(conn, "member", "member")
    lapse(conn, lot_of(conn, expiring_grant(conn, busy, 100)))  # due first
    lapse(conn, lot_of(conn, expiring_grant(conn, idle, 100)))
    with db.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM user_credits WHERE user_id = %s FOR NO KEY UPDATE", (busy,))
        report = expire(conn, limit=1)
        assert (report["lots_expired"], report["accounts_skipped"]) == (1, 1)
        assert one(conn, "SELECT user_id::text FROM credit_usage_log WHERE type = 'expire'") == idle
        holder.execute("ROLLBACK")
