"""Row level security: a credits_user reads its own rows and its pool's, nothing else."""

from __future__ import annotations

from typing import Any

from tests.support.helpers import Conn, add_users
from tests.support.security import USER_TABLES, acting, one
from tests.support.spending import add_member, debit


def visible(conn: Conn) -> dict[str, Any]:
    """What the current session sees of each table, as sets of readable tuples."""
    return {
        "balances": {r[0] for r in conn.execute(
            "SELECT user_id::text FROM user_credits").fetchall()},
        "log": {(r[0], r[1], r[2]) for r in conn.execute(
            "SELECT user_id::text, coalesce(actor_user_id::text, '-'), source"
            " FROM credit_usage_log").fetchall()},
        "teams": {(r[0], r[1]) for r in conn.execute(
            "SELECT team_admin_id::text, team_member_id::text FROM team_credit_sharing"
        ).fetchall()},
    }


def setup_pool(conn: Conn) -> tuple[str, str, str, str, str]:
    """A team admin with two members (one of whom spent from the pool) and an outsider
    in another team."""
    admin, member, mate, other_admin, outsider = add_users(
        conn, "team_admin", "member", "member", "team_admin", "member")
    add_member(conn, admin, member)
    add_member(conn, admin, mate)
    add_member(conn, other_admin, outsider)
    debit(conn, member, 350)           # own account, now empty
    debit(conn, member, 100)           # from the pool: admin's account, actor member
    debit(conn, mate, 7)               # mate's own account
    debit(conn, outsider, 500)         # from the other pool
    return admin, member, mate, other_admin, outsider


def test_a_member_sees_its_rows_and_its_pool_balance(conn: Conn) -> None:
    admin, member, mate, _, _ = setup_pool(conn)
    with acting(conn, "credits_user", member):
        seen = visible(conn)
    assert seen == {
        "balances": {member, admin},
        "log": {(member, "-", "signup"), (member, "-", "usage"), (admin, member, "usage")},
        "teams": {(admin, member)},
    }
    assert mate not in seen["balances"]


def test_a_team_admin_sees_its_rows_the_pool_debits_and_its_team(conn: Conn) -> None:
    admin, member, mate, _, _ = setup_pool(conn)
    with acting(conn, "credits_user", admin):
        seen = visible(conn)
    assert seen == {
        "balances": {admin},
        "log": {(admin, "-", "signup"), (admin, member, "usage")},
        "teams": {(admin, member), (admin, mate)},
    }


def test_an_outsider_sees_only_its_own_rows(conn: Conn) -> None:
    admin, member, _, other_admin, outsider = setup_pool(conn)
    with acting(conn, "credits_user", outsider):
        seen = visible(conn)
        # Asking for someone else's rows by id finds nothing.
        assert conn.execute("SELECT * FROM user_credits WHERE user_id IN (%s, %s)",
                            (admin, member)).fetchall() == []
        assert conn.execute("SELECT * FROM credit_usage_log WHERE user_id = %s",
                            (admin,)).fetchall() == []
    assert seen == {
        "balances": {outsider, other_admin},
        "log": {(outsider, "-", "signup"), (other_admin, outsider, "usage")},
        "teams": {(other_admin, outsider)},
    }


def test_no_identity_sees_nothing(conn: Conn) -> None:
    setup_pool(conn)
    with acting(conn, "credits_user", None):
        assert visible(conn) == {"balances": set(), "log": set(), "teams": set()}


def test_credits_admin_and_the_owner_see_every_row(conn: Conn) -> None:
    setup_pool(conn)
    everything = visible(conn)
    assert len(everything["balances"]) == 5 and len(everything["teams"]) == 3
    with acting(conn, "credits_admin"):
        assert visible(conn) == everything


def test_row_level_security_is_enabled_not_forced(conn: Conn) -> None:
    # Forced, it would apply to the owner, which the SECURITY DEFINER functions
    # run as; they must keep reading and writing every row.
    for table in USER_TABLES:
        assert conn.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s::regclass",
            (table,),
        ).fetchone() == (True, False), table
    admin, member, *_ = setup_pool(conn)
    with acting(conn, "credits_user", member):
        # The function sees (and spends) the pool row the policy shows the member.
        assert debit(conn, member, 1)["account_user_id"] == admin


def test_the_identity_is_evaluated_once_per_query(conn: Conn) -> None:
    # The policies call credits_current_user_id() in a sub-SELECT: one InitPlan,
    # not one call per row (nor a plan that cannot use the primary key).
    (me,) = add_users(conn, "member")
    with acting(conn, "credits_user", me):
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT * FROM user_credits WHERE user_id = %s", (me,)).fetchall())
    assert "InitPlan" in plan
    assert one(conn, "SELECT count(*) FROM pg_policy") == 7


def test_a_credits_user_sees_only_the_idempotency_keys_it_owns(conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    debit(conn, member, 350)
    debit(conn, member, 400, idempotency_key="mine")  # lands on the admin's account
    debit(conn, admin, 10, idempotency_key="admins")
    with acting(conn, "credits_user", member):
        seen = conn.execute("SELECT owner_user_id::text, idempotency_key"
                            " FROM credit_idempotency_keys").fetchall()
    assert seen == [(member, "mine")]
    with acting(conn, "credits_admin"):
        assert one(conn, "SELECT count(*) FROM credit_idempotency_keys") == 2
