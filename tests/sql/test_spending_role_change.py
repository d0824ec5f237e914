"""Role changes top up the allocation difference; verify_credit_integrity names every broken invariant."""

from __future__ import annotations

import pytest

from tests.support.helpers import Conn, add_users, add_users_without_credits, balance, log_rows
from tests.support.spending import add_member, debit, grant, integrity, refund

INT_MAX = 2**31 - 1


def set_role(conn: Conn, role: str | None, *users: str) -> None:
    conn.execute("UPDATE users SET role = %s WHERE id = ANY(%s::uuid[])", (role, list(users)))


@pytest.mark.parametrize(
    ("old", "new", "increase"),
    [("member", "admin", 650), ("member", "team_admin", 4650), (None, "super_admin", 9650),
     ("unknown", "RecruitPro", 650)],
)
def test_larger_allocation_tops_up_the_difference(
    conn: Conn, old: str | None, new: str, increase: int
) -> None:
    [user] = add_users(conn, old)
    debit(conn, user, 100)
    set_role(conn, new, user)
    assert balance(conn, user) == (350 + increase, 100, 250 + increase)
    amount, kind, source, description = log_rows(conn, user)[-1]
    assert (amount, kind, source) == (increase, "credit", "role_change")
    assert repr(new) in description
    assert integrity(conn) == []


@pytest.mark.parametrize(("old", "new"), [("admin", "member"), ("admin", "RecruitPro"),
                                          ("member", None), ("member", "unknown")])
def test_smaller_or_equal_allocation_changes_nothing(conn: Conn, old: str, new: str | None) -> None:
    [user] = add_users(conn, old)
    before = balance(conn, user), log_rows(conn, user)
    set_role(conn, new, user)
    assert (balance(conn, user), log_rows(conn, user)) == before


def test_updates_that_keep_the_role_change_nothing(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    before = log_rows(conn, user)
    conn.execute("UPDATE users SET email = 'x@example.com' WHERE id = %s", (user,))
    conn.execute("UPDATE users SET role = role WHERE id = %s", (user,))
    assert log_rows(conn, user) == before


def test_bulk_role_change(conn: Conn) -> None:
    users = add_users(conn, *["member"] * 50, *["admin"] * 50)
    conn.execute("UPDATE users SET role = 'team_admin' WHERE id = ANY(%s::uuid[])", (users,))
    assert [balance(conn, u) for u in users] == [(5000, 0, 5000)] * 100
    assert integrity(conn) == []


def test_a_user_without_a_balance_row_gets_the_new_roles_allocation(conn: Conn) -> None:
    # The account is opened by the role change itself, at the new role, exactly as
    # the backfill would open it (see test_ledger_correctness for why).
    [user] = add_users_without_credits(conn, "member")
    set_role(conn, "admin", user)
    assert balance(conn, user) == (1000, 0, 1000)
    conn.execute("SELECT backfill_user_credits()")
    assert balance(conn, user) == (1000, 0, 1000)


def test_overflowing_top_up_is_capped_with_a_warning(conn: Conn) -> None:
    rich, normal = add_users(conn, "member", "member")
    grant(conn, rich, INT_MAX - 350 - 10)
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    set_role(conn, "admin", rich, normal)  # the UPDATE of users succeeds
    assert balance(conn, rich) == (INT_MAX, 0, INT_MAX)
    assert log_rows(conn, rich)[-1][0] == 10
    assert balance(conn, normal) == (1000, 0, 1000)
    assert any("capped" in n for n in notices)
    set_role(conn, "super_admin", rich)  # nothing fits any more: no log row of 0
    assert log_rows(conn, rich)[-1][0] == 10
    assert integrity(conn) == []


# --- verify_credit_integrity --------------------------------------------------------


def test_integrity_holds_through_every_operation(conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    spent = debit(conn, member, 1000)
    debit(conn, member, 10)
    grant(conn, member, 5)
    refund(conn, spent["log_id"])
    set_role(conn, "admin", member)
    assert integrity(conn) == []


def test_integrity_reports_a_tampered_balance(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    conn.execute("UPDATE user_credits SET total_credits = 400 WHERE user_id = %s", (user,))
    problems = integrity(conn)
    assert {p[0] for p in problems} == {user}
    assert any("total_credits 400" in p[1] for p in problems)
    assert any("remaining_credits 50" in p[1] or "remaining_credits 400" in p[1]
               for p in problems)
    conn.execute("UPDATE user_credits SET total_credits = 350, used_credits = 7"
                 " WHERE user_id = %s", (user,))
    assert any("used_credits 7" in p[1] for p in integrity(conn))


def test_integrity_reports_pools_over_their_cap(conn: Conn) -> None:
    admin, *members = add_users(conn, "team_admin", *["member"] * 4)
    for member in members:
        add_member(conn, admin, member)
    conn.execute("UPDATE role_credits SET team_member_limit = 3 WHERE role = 'team_admin'")
    [(user, problem)] = integrity(conn)
    assert user == admin and "4 members" in problem and "allows 3" in problem


def test_integrity_reports_members_of_an_admin_who_lost_the_team_role(conn: Conn) -> None:
    admin, first, second = add_users(conn, "team_admin", "member", "member")
    add_member(conn, admin, first)
    add_member(conn, admin, second)
    conn.execute("UPDATE users SET role = 'member' WHERE id = %s", (admin,))
    problems = integrity(conn)
    assert sorted(p[0] for p in problems) == sorted([first, second])
    assert all("allows no team" in p[1] for p in problems)
