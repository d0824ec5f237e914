"""Allowances that renew by role (revision 0011): periods anchored on the account's opening,
renew_allowances() once per period with a capped rollover, role changes per period."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.support.databases import Database
from tests.support.helpers import Conn, add_users
from tests.support.security import one
from tests.support.spending import (
    add_member,
    credit_balance,
    debit,
    fails_cleanly,
    integrity,
    refund,
    run_together,
)


def renewing(conn: Conn, role: str, every: str = "1 month", cap: int = 0) -> None:
    conn.execute("UPDATE role_credits SET renewal_interval = %s::interval, rollover_cap = %s"
                 " WHERE role = %s", (every, cap, role))


def renew(conn: Conn, **kwargs: Any) -> dict[str, Any]:
    names = ", ".join(f"p_{name} => %({name})s" for name in kwargs)
    return one(conn, f"SELECT renew_allowances({names})", kwargs)  # type: ignore[no-any-return]


def account(conn: Conn, user: str) -> tuple[Any, ...]:
    row = conn.execute("SELECT total_credits, used_credits, remaining_credits, tracked_credits,"
                       " period_ends_at, period_allowance, created_at"
                       " FROM user_credits WHERE user_id = %s", (user,)).fetchone()
    assert row is not None
    return tuple(row)


def later(conn: Conn, text: str) -> datetime:
    return one(conn, "SELECT now() + %s::interval", (text,))  # type: ignore[no-any-return]


def entries(conn: Conn, user: str, after: int = 0) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT type, source, amount FROM credit_usage_log"
                        " WHERE user_id = %s AND id > %s ORDER BY id", (user, after)).fetchall()


def last_entry(conn: Conn) -> int:
    return one(conn, "SELECT coalesce(max(id), 0) FROM credit_usage_log")  # type: ignore[no-any-return]


# --- nothing renews until an operator says so --------------------------------------------------


def test_no_seeded_role_renews_and_the_renewal_does_nothing(conn: Conn) -> None:
    assert one(conn, "SELECT count(*) FROM role_credits WHERE renewal_interval IS NOT NULL") == 0
    (user,) = add_users(conn, "member")
    assert account(conn, user)[3:6] == (0, None, None)
    report = renew(conn, as_of=later(conn, "10 years"))
    assert report["accounts_renewed"] == 0
    assert one(conn, "SELECT count(*) FROM credit_lots WHERE expires_at IS NOT NULL") == 0


def test_a_renewing_roles_signup_allowance_expires_with_the_first_period(conn: Conn) -> None:
    renewing(conn, "member")
    (user,) = add_users(conn, "member")
    total, _, _, tracked, ends_at, allowance, opened = account(conn, user)
    assert (total, tracked, allowance) == (350, 350, 350)
    assert ends_at == one(conn, "SELECT (%s AT TIME ZONE 'UTC' + interval '1 month')"
                                " AT TIME ZONE 'UTC'", (opened,))
    assert one(conn, "SELECT expires_at FROM credit_lots WHERE user_id = %s", (user,)) == ends_at


# --- renewal ---------------------------------------------------------------------------------------


def test_the_next_period_brings_the_allowance_and_the_capped_rollover(conn: Conn) -> None:
    renewing(conn, "member", cap=100)
    (user,) = add_users(conn, "member")
    debit(conn, user, 200)  # 150 of the allowance left at the period's end
    mark = last_entry(conn)
    assert renew(conn)["accounts_renewed"] == 0  # the period has not ended
    report = renew(conn, as_of=later(conn, "1 month 1 day"))
    assert (report["accounts_renewed"], report["credits_renewed"],
            report["credits_rolled_over"], report["credits_expired"]) == (1, 350, 100, 150)
    assert entries(conn, user, mark) == [("expire", "expiry", -150), ("credit", "renewal", 350),
                                         ("credit", "rollover", 100)]
    assert renew(conn, as_of=later(conn, "1 month 1 day"))["accounts_renewed"] == 0
    _, _, remaining, tracked, ends_at, allowance, _ = account(conn, user)
    assert (remaining, tracked, allowance) == (450, 450, 350)
    assert ends_at > later(conn, "1 month")
    assert integrity(conn) == []


def test_missed_periods_give_the_current_allowance_once(conn: Conn) -> None:
    renewing(conn, "member", cap=1000)
    (user,) = add_users(conn, "member")
    report = renew(conn, as_of=later(conn, "5 months 1 day"))
    assert (report["credits_renewed"], report["credits_rolled_over"]) == (350, 0)
    _, _, remaining, _, ends_at, _, opened = account(conn, user)
    assert remaining == 350
    assert ends_at == one(conn, "SELECT (%s AT TIME ZONE 'UTC' + interval '6 months')"
                                " AT TIME ZONE 'UTC'", (opened,))
    assert integrity(conn) == []


def age(conn: Conn, user: str, days: int) -> None:
    """Time passes for one account: its opening, period and lots move ``days`` into the past."""
    conn.execute("UPDATE user_credits SET created_at = created_at - %(d)s * interval '1 day',"
                 " period_ends_at = period_ends_at - %(d)s * interval '1 day'"
                 " WHERE user_id = %(u)s", {"d": days, "u": user})
    conn.execute("UPDATE credit_lots SET expires_at = expires_at - %(d)s * interval '1 day'"
                 " WHERE user_id = %(u)s AND expires_at IS NOT NULL", {"d": days, "u": user})


def test_the_rollover_is_the_same_whether_or_not_a_sweep_ran_first(
        conn: Conn, db: Database) -> None:
    renewing(conn, "member", "30 days", cap=300)
    swept, unswept = add_users(conn, "member", "member")
    for user in (swept, unswept):
        spent = debit(conn, user, 100)
        debit(conn, user, 60)
        refund(conn, spent["log_id"])  # 290 unspent at the period's end
        age(conn, user, 31)
    with db.connect() as holder:  # the sweep skips the account this holds
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM user_credits WHERE user_id = %s FOR NO KEY UPDATE",
                       (unswept,))
        assert one(conn, "SELECT expire_credits()")["lots_expired"] == 1
        holder.execute("ROLLBACK")
    assert one(conn, "SELECT count(*) FROM credit_usage_log WHERE type = 'expire'") == 1
    renew(conn)
    rollovers: dict[str, int] = dict(conn.execute(
        "SELECT user_id::text, amount FROM credit_usage_log WHERE source = 'rollover'").fetchall())
    assert rollovers == {swept: 290, unswept: 290}
    assert integrity(conn) == []


def test_credits_refunded_after_the_period_ended_never_roll_over(conn: Conn) -> None:
    renewing(conn, "member", "30 days", cap=1000)
    (user,) = add_users(conn, "member")
    spent = debit(conn, user, 100)
    age(conn, user, 31)
    refund(conn, spent["log_id"])  # onto the lapsed allowance: expires at once
    renew(conn)
    assert one(conn, "SELECT amount FROM credit_usage_log WHERE source = 'rollover'") == 250
    assert integrity(conn) == []


def test_periods_are_anchored_on_the_opening_and_computed_in_utc(conn: Conn) -> None:
    anchor = "2026-01-31 10:00+00"
    expected = [("2026-02-27 12:00+00", "2026-01-31 10:00+00", "2026-02-28 10:00+00"),
                ("2026-03-01 00:00+00", "2026-02-28 10:00+00", "2026-03-31 10:00+00"),
                ("2036-03-31 09:59+00", "2036-02-29 10:00+00", "2036-03-31 10:00+00"),
                ("2036-03-31 10:00+00", "2036-03-31 10:00+00", "2036-04-30 10:00+00"),
                ("8999-03-31 09:59+00", "8999-02-28 10:00+00", "8999-03-31 10:00+00"),
                ("2025-12-31 00:00+00", "2026-01-31 10:00+00", "2026-02-28 10:00+00")]
    for zone in ("UTC", "Pacific/Auckland", "America/New_York"):
        conn.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
        for at, starts, ends in expected:
            got = conn.execute(
                "SELECT starts_at = %s::timestamptz, ends_at = %s::timestamptz"
                " FROM credits_internal.allowance_period(%s, '1 month', %s)",
                (starts, ends, anchor, at)).fetchone()
            assert got == (True, True), (zone, at)
    conn.execute("RESET TimeZone")


def test_a_long_history_of_weekly_periods_lands_on_its_boundaries(conn: Conn) -> None:
    anchor = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    for weeks in (0, 1, 52, 520, 5200):
        at = anchor + timedelta(weeks=weeks, seconds=1)
        starts = one(conn, "SELECT starts_at FROM credits_internal.allowance_period(%s, '7 days', %s)",
                     (anchor, at))
        assert starts == anchor + timedelta(weeks=weeks)


# --- role changes per period ---------------------------------------------------------------------


def test_a_role_change_mid_period_raises_the_periods_allowance_and_never_claws_back(
        conn: Conn) -> None:
    renewing(conn, "member")
    renewing(conn, "admin")
    (user,) = add_users(conn, "member")
    conn.execute("UPDATE users SET role = 'admin' WHERE id = %s", (user,))
    _, _, remaining, _, ends_at, allowance, _ = account(conn, user)
    assert (remaining, allowance) == (1000, 1000)
    assert one(conn, "SELECT expires_at FROM credit_lots WHERE source = 'role_change'") == ends_at
    conn.execute("UPDATE users SET role = 'member' WHERE id = %s", (user,))
    conn.execute("UPDATE users SET role = 'admin' WHERE id = %s", (user,))
    assert account(conn, user)[2] == 1000  # churn mints nothing
    renew(conn, as_of=later(conn, "1 month 1 day"))
    assert account(conn, user)[5] == 1000  # the next period: the admin allowance
    assert integrity(conn) == []


def test_a_one_time_account_whose_role_starts_renewing_keeps_its_allocation(conn: Conn) -> None:
    renewing(conn, "admin")
    (user,) = add_users(conn, "member")  # member: one-time 350
    conn.execute("UPDATE users SET role = 'admin' WHERE id = %s", (user,))
    total, _, _, tracked, ends_at, allowance, _ = account(conn, user)
    assert (total, tracked, allowance) == (1000, 650, 1000)
    assert ends_at is not None
    assert integrity(conn) == []


def test_giving_a_role_an_interval_renews_its_accounts_from_their_current_periods_end(
        conn: Conn) -> None:
    (user,) = add_users(conn, "member")
    renewing(conn, "member")
    _, _, remaining, _, ends_at, allowance, opened = account(conn, user)
    assert (remaining, allowance) == (350, 350)
    assert ends_at == one(conn, "SELECT (%s AT TIME ZONE 'UTC' + interval '1 month')"
                                " AT TIME ZONE 'UTC'", (opened,))
    assert renew(conn)["accounts_renewed"] == 0
    assert renew(conn, as_of=later(conn, "1 month 1 day"))["credits_renewed"] == 350
    assert account(conn, user)[2] == 700  # the one-time 350 stays: nothing is taken back
    assert integrity(conn) == []


def test_a_team_pool_renews_with_its_admins_role(conn: Conn) -> None:
    renewing(conn, "team_admin")
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    debit(conn, member, 5000)  # more than the member's own 350: all from the pool
    renew(conn, as_of=later(conn, "1 month 1 day"))
    assert credit_balance(conn, member)["team_pool_spendable"] == 5000
    assert integrity(conn) == []


# --- concurrency -----------------------------------------------------------------------------------


def test_renewals_running_together_renew_each_account_once(conn: Conn, db: Database) -> None:
    renewing(conn, "member", cap=50)
    users = add_users(conn, *["member"] * 20)
    when = later(conn, "1 month 1 day")
    sessions = [db.connect() for _ in range(4)]
    try:
        results = run_together(4, lambda i: renew(sessions[i], as_of=when, limit=7))
    finally:
        for session in sessions:
            session.close()
    assert not [r for r in results if isinstance(r, BaseException)], results
    while renew(conn, as_of=when)["accounts_renewed"]:
        pass
    counts = conn.execute("SELECT user_id::text, count(*) FROM credit_usage_log"
                          " WHERE source = 'renewal' GROUP BY user_id").fetchall()
    assert sorted(counts) == sorted((u, 1) for u in users)
    assert integrity(conn) == []


def test_the_renewal_skips_an_account_a_transaction_holds(conn: Conn, db: Database) -> None:
    renewing(conn, "member")
    busy, idle = add_users(conn, "member", "member")
    with db.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM user_credits WHERE user_id = %s FOR NO KEY UPDATE", (busy,))
        report = renew(conn, as_of=later(conn, "1 month 1 day"))
        assert (report["accounts_renewed"], report["accounts_skipped"]) == (1, 1)
        assert one(conn, "SELECT count(*) FROM credit_usage_log WHERE user_id = %s"
                         " AND source = 'renewal'", (idle,)) == 1
        holder.execute("ROLLBACK")
    assert renew(conn, as_of=later(conn, "1 month 1 day"))["accounts_renewed"] == 1
    assert integrity(conn) == []


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "sqlstate"), [
    ("SELECT renew_allowances(NULL)", "22004"),
    ("SELECT renew_allowances(now(), 0)", "22023"),
    ("SELECT renew_allowances('infinity')", "22023"),
    ("SELECT renew_allowances('-infinity')", "22023"),
    ("SELECT renew_allowances('9000-01-01 00:00+00')", "22023"),
    ("SELECT grant_credits((SELECT id FROM users LIMIT 1), 5, 'renewal')", "22023"),
    ("SELECT grant_credits((SELECT id FROM users LIMIT 1), 5, 'rollover')", "22023"),
    ("SELECT grant_credits((SELECT id FROM users LIMIT 1), 5, 'expiry')", "22023"),
])
def test_bad_arguments_of_the_renewal(conn: Conn, call: str, sqlstate: str) -> None:
    add_users(conn, "member")
    fails_cleanly(conn, sqlstate, call)


@pytest.mark.parametrize("change", [
    "renewal_interval = interval '0'", "renewal_interval = interval '-1 day'",
    "renewal_interval = interval '59 minutes'", "renewal_interval = interval '101 years'",
    "renewal_interval = interval '1 month -1 day'", "renewal_interval = interval '1 day -1 hour'",
    "renewal_interval = interval '1 month 15 days'",
    "rollover_cap = -1"])
def test_role_credits_refuses_a_period_or_cap_that_cannot_be(conn: Conn, change: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(f"UPDATE role_credits SET {change} WHERE role = 'member'")


def test_a_role_added_with_an_interval_renews_the_accounts_of_its_users(conn: Conn) -> None:
    (user,) = add_users(conn, "Sourcer")  # unknown: the member fallback, one-time
    assert account(conn, user)[4] is None
    conn.execute("INSERT INTO role_credits (role, credits, renewal_interval)"
                 " VALUES ('Sourcer', 500, '1 month')")
    assert account(conn, user)[4] is not None
    assert renew(conn, as_of=later(conn, "1 month 1 day"))["credits_renewed"] == 500
    assert integrity(conn) == []


def test_a_limited_renewal_moves_past_a_busy_account(conn: Conn, db: Database) -> None:
    renewing(conn, "member")
    busy, idle = add_users(conn, "member", "member")
    conn.execute("UPDATE user_credits SET period_ends_at = period_ends_at - interval '1 second'"
                 " WHERE user_id = %s", (busy,))  # due first
    conn.execute("UPDATE credit_lots SET expires_at = expires_at - interval '1 second'"
                 " WHERE user_id = %s", (busy,))
    with db.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM user_credits WHERE user_id = %s FOR NO KEY UPDATE", (busy,))
        report = renew(conn, as_of=later(conn, "1 month 1 day"), limit=1)
        assert (report["accounts_renewed"], report["accounts_skipped"]) == (1, 1)
        assert one(conn, "SELECT user_id::text FROM credit_usage_log"
                         " WHERE source = 'renewal'") == idle
        holder.execute("ROLLBACK")


@pytest.mark.parametrize(("every", "at", "starts"), [
    ("3 months", "2026-05-01 00:00+00", "2026-04-30 10:00+00"),
    ("1 year", "2028-02-29 12:00+00", "2028-01-31 10:00+00"),
    ("36 hours", "2026-02-03 09:59+00", "2026-02-01 22:00+00"),
])
def test_periods_of_other_lengths(conn: Conn, every: str, at: str, starts: str) -> None:
    assert one(conn, "SELECT starts_at = %s::timestamptz FROM credits_internal.allowance_period("
                     "'2026-01-31 10:00+00', %s::interval, %s)", (starts, every, at)) is True


def test_the_balance_says_when_the_next_renewal_comes_and_what_it_gives(conn: Conn) -> None:
    renewing(conn, "team_admin", cap=500)
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    ends_at = account(conn, admin)[4]
    balance = credit_balance(conn, member)
    assert balance["own"]["next_renewal"] is None  # member: one-time
    renewal = balance["team_pool_next_renewal"]
    assert (renewal["credits"], renewal["rollover_cap"]) == (5000, 500)
    # Compared as times: PostgreSQL drops trailing zeros of the fraction, isoformat() not.
    assert datetime.fromisoformat(renewal["renews_at"]) == ends_at
    assert credit_balance(conn, admin)["own"]["next_renewal"]["credits"] == 5000


def test_the_period_is_computed_in_the_calling_plan(conn: Conn) -> None:
    """credits_internal.allowance_period is inlined (0013): a renewal of a million accounts
    computes each period in its plan, with no function call per row."""
    plan = conn.execute(
        "EXPLAIN (VERBOSE, FORMAT JSON) SELECT p.ends_at FROM user_credits uc"
        " CROSS JOIN LATERAL credits_internal.allowance_period(uc.created_at,"
        " interval '1 month', now()) p").fetchone()
    assert plan is not None
    assert "allowance_period" not in str(plan[0]), "the period is a function call per row"
    assert "Function Scan" not in str(plan[0])


def test_a_limited_renewal_walks_its_batch_not_the_backlog(conn: Conn) -> None:
    """A batch of renew_allowances(p_limit => N) reads about N entries of the period
    index (0014: it orders by (period_ends_at, user_id), so the walk stops after the
    batch), not every due account: a backlog of 3,000 costs a batch of 10 its own size."""
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month' WHERE role = 'member'")
    conn.execute("INSERT INTO users (email, role) SELECT 'w' || g || '@example.com', 'member'"
                 " FROM generate_series(1, 3000) AS g")
    conn.execute("UPDATE user_credits SET period_ends_at = period_ends_at - interval '40 days',"
                 " created_at = created_at - interval '40 days'")
    conn.execute("ANALYZE users, user_credits, role_credits")
    with conn.transaction():
        report = one(conn, "SELECT renew_allowances(p_limit => 10)")
        # This transaction's own counts of the index (entries returned by its scans).
        scans, entries = conn.execute(
            "SELECT pg_stat_get_xact_numscans(i), pg_stat_get_xact_tuples_returned(i)"
            " FROM CAST('user_credits_period_ends_idx' AS regclass) AS i").fetchone() or (0, 0)
    assert report["accounts_renewed"] == 10
    assert scans >= 1, "the batch was not found on the period index"
    assert entries <= 100, f"a batch of 10 read {entries} index entries of a 3,000 backlog"
