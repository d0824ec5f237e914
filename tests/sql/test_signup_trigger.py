"""The signup trigger: every new user gets the allocation of their role, once, with one log row."""

from __future__ import annotations

import io

import pytest

from tests.support.helpers import Conn, add_users, balance, ledger_mismatches, log_rows

ROLE_CREDITS = {
    "member": 350,
    "admin": 1000,
    "team_admin": 5000,
    "RecruitPro": 1000,
    "super_admin": 10000,
}


def test_role_credits_is_seeded_exactly(conn: Conn) -> None:
    rows = conn.execute("SELECT role, credits, team_member_limit FROM role_credits").fetchall()
    assert sorted(rows) == sorted(
        [("member", 350, 0), ("admin", 1000, 0), ("team_admin", 5000, 4),
         ("RecruitPro", 1000, 0), ("super_admin", 10000, 0)]
    )


@pytest.mark.parametrize(("role", "credits"), sorted(ROLE_CREDITS.items()))
def test_each_role_gets_its_allocation(conn: Conn, role: str, credits: int) -> None:
    [user] = add_users(conn, role)
    assert balance(conn, user) == (credits, 0, credits)
    assert log_rows(conn, user) == [
        (credits, "credit", "signup", f"signup allocation for role {role}")
    ]


def test_null_role_gets_member_fallback_and_says_so(conn: Conn) -> None:
    [user] = add_users(conn, None)
    assert balance(conn, user) == (350, 0, 350)
    [(amount, _type, source, description)] = log_rows(conn, user)
    assert (amount, source) == (350, "signup")
    assert "no role" in description and "fallback" in description


@pytest.mark.parametrize("role", ["Recruiter", "MEMBER", "super-admin", ""])
def test_unknown_role_gets_member_fallback_and_is_named(conn: Conn, role: str) -> None:
    # Role names are case-sensitive: 'MEMBER' is not 'member'.
    [user] = add_users(conn, role)
    assert balance(conn, user) == (350, 0, 350)
    [(_amount, _type, _source, description)] = log_rows(conn, user)
    assert f"unknown role '{role}'" in description and "fallback" in description


def test_changing_role_credits_affects_future_signups_only(conn: Conn) -> None:
    [before] = add_users(conn, "member")
    conn.execute("UPDATE role_credits SET credits = 400 WHERE role = 'member'")
    [after] = add_users(conn, "member")
    assert balance(conn, before) == (350, 0, 350)
    assert balance(conn, after) == (400, 0, 400)


def test_zero_credit_role_gets_a_balance_row_and_no_zero_log_row(conn: Conn) -> None:
    conn.execute("INSERT INTO role_credits (role, credits) VALUES ('guest', 0)")
    [user] = add_users(conn, "guest")
    assert balance(conn, user) == (0, 0, 0)
    assert log_rows(conn, user) == []
    assert ledger_mismatches(conn) == []


def test_missing_member_row_still_lets_users_sign_up(conn: Conn) -> None:
    conn.execute("DELETE FROM role_credits WHERE role = 'member'")
    [user] = add_users(conn, None)
    assert balance(conn, user) == (0, 0, 0)


def test_signup_never_fails_because_of_credits(conn: Conn) -> None:
    # Make every allocation log row invalid: the allocation fails as a whole,
    # the users are still created, and the backfill allocates them later.
    conn.execute(
        "ALTER TABLE credit_usage_log ADD CONSTRAINT test_refuse_signup CHECK (source <> 'signup')"
    )
    warnings: list[str] = []
    conn.add_notice_handler(lambda diag: warnings.append(diag.message_primary or ""))
    users = add_users(conn, "member", "admin")
    assert all(balance(conn, user) is None for user in users)
    assert any("signup allocation failed" in w for w in warnings)
    conn.execute("ALTER TABLE credit_usage_log DROP CONSTRAINT test_refuse_signup")
    summary = conn.execute("SELECT backfill_user_credits()").fetchone()
    assert summary is not None and summary[0]["users_backfilled"] == 2
    assert balance(conn, users[1]) == (1000, 0, 1000)


def test_multi_row_insert_allocates_every_user_once(conn: Conn) -> None:
    users = add_users(conn, "member", "admin", None, "team_admin")
    assert [balance(conn, u) for u in users] == [
        (350, 0, 350), (1000, 0, 1000), (350, 0, 350), (5000, 0, 5000)
    ]
    assert conn.execute("SELECT count(*) FROM credit_usage_log").fetchone() == (4,)


def test_copy_signup_allocates(conn: Conn) -> None:
    data = io.StringIO("a@example.com\tadmin\nb@example.com\t\\N\n")
    with conn.cursor().copy("COPY users (email, role) FROM STDIN") as copy:
        copy.write(data.read())
    rows = conn.execute(
        "SELECT u.email, uc.total_credits FROM users u JOIN user_credits uc ON uc.user_id = u.id"
        " ORDER BY u.email"
    ).fetchall()
    assert rows == [("a@example.com", 1000), ("b@example.com", 350)]


def test_bulk_signup_of_100k_users(conn: Conn) -> None:
    conn.execute(
        """
        INSERT INTO users (email, role)
        SELECT 'bulk' || g || '@example.com',
               (ARRAY['member','admin','team_admin','RecruitPro','super_admin',NULL,'Other'])[1 + g % 7]
        FROM generate_series(1, 100000) AS g
        """
    )
    assert conn.execute("SELECT count(*) FROM user_credits").fetchone() == (100000,)
    assert conn.execute(
        "SELECT count(*), count(DISTINCT user_id) FROM credit_usage_log WHERE source = 'signup'"
    ).fetchone() == (100000, 100000)
    expected = sum(
        [350, 1000, 5000, 1000, 10000, 350, 350][g % 7]
        for g in range(1, 100001)
    )
    assert conn.execute("SELECT sum(total_credits) FROM user_credits").fetchone() == (expected,)
    assert ledger_mismatches(conn) == []
