"""Privileges: what credits_user and credits_admin may call and touch, and nothing more."""

from __future__ import annotations

import pytest

from tests.support.helpers import Conn, add_users, balance, log_rows
from tests.support.security import (
    ADMIN_FUNCTIONS,
    ADMIN_TABLES,
    USER_FUNCTIONS,
    USER_TABLES,
    acting,
    ensure_role,
    one,
    refused,
)
from tests.support.spending import add_member, debit, state

# Functions planned for each call's own arguments (a generic plan of their batch
# statements is quadratic; sql/031).
CUSTOM_PLANS = {"renew_allowances(timestamp with time zone,integer)":
                ["plan_cache_mode=force_custom_plan"]}
INLINED = ("credits_internal.allowance_period"
           "(timestamp with time zone,interval,timestamp with time zone)")


def test_every_function_is_pinned_and_executable_by_nobody_by_default(conn: Conn) -> None:
    ensure_role(conn, "nobody_test")
    functions = conn.execute(
        "SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig, p.prosqlbody IS NOT NULL,"
        " has_function_privilege('nobody_test', p.oid, 'EXECUTE'),"
        " has_function_privilege('public', p.oid, 'EXECUTE')"
        " FROM pg_proc p WHERE p.pronamespace IN ('public'::regnamespace,"
        "                                         'credits_internal'::regnamespace)"
    ).fetchall()
    assert len(functions) == 25
    for signature, _definer, config, atomic, nobody_can, public_can in functions:
        # SECURITY DEFINER or not, every function fixes its search_path, with
        # pg_temp named last so temporary tables cannot shadow ours; except one
        # inlined into its callers, which a SET clause would prevent: its body is
        # BEGIN ATOMIC, its names bound when it was created (no search_path runs it).
        if signature == INLINED:
            assert config is None and atomic, signature
        else:
            assert config == ["search_path=pg_catalog, pg_temp",
                              *CUSTOM_PLANS.get(signature, [])], signature
        assert nobody_can is False, signature
        assert public_can is False, signature
    definers = {s for s, definer, *_ in functions if definer}
    assert definers == {s for s, *_ in functions} - {
        "credits_internal.refuse_log_change()", "credits_current_user_id()",
        "credits_internal.current_user_id()",
        # Called only by the owner's SECURITY DEFINER functions: it runs as the owner.
        "credits_internal.lock_allocation_roles(text[])",
        "credits_internal.allowance_period(timestamp with time zone,interval,timestamp with time zone)"}


def test_execute_is_granted_exactly_as_documented(conn: Conn) -> None:
    # Supabase's NOINHERIT roles may hold direct grants on PostgreSQL 15 when
    # they existed at install time (test_security_supabase checks those).
    grantees: dict[str, list[str]] = dict(conn.execute(
        "SELECT p.oid::regprocedure::text,"
        " coalesce(array_agg(a.grantee::regrole::text ORDER BY a.grantee::regrole::text)"
        "          FILTER (WHERE a.grantee <> p.proowner"
        "                  AND a.grantee::regrole::text NOT IN ('authenticated', 'service_role')),"
        "          '{}')"
        " FROM pg_proc p LEFT JOIN LATERAL aclexplode(p.proacl) a ON true"
        " WHERE p.pronamespace = 'public'::regnamespace GROUP BY p.oid"
    ).fetchall())
    for signature, roles in grantees.items():
        expected = []
        if signature in ADMIN_FUNCTIONS:
            expected.append("credits_admin")
        if signature in USER_FUNCTIONS:
            expected.append("credits_user")
        assert roles == expected, signature


@pytest.mark.parametrize("role", ["credits_user", "credits_admin"])
def test_table_privileges_are_select_only(conn: Conn, role: str) -> None:
    tables = USER_TABLES if role == "credits_user" else ADMIN_TABLES
    for table in ADMIN_TABLES:
        assert one(conn, "SELECT has_table_privilege(%s, %s, 'SELECT')",
                   (role, table)) is (table in tables), (role, table)
        for write in ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
            assert one(conn, "SELECT has_table_privilege(%s, %s, %s)",
                       (role, table, write)) is False, (role, table, write)
    assert one(conn, "SELECT has_schema_privilege(%s, 'public', 'USAGE')", (role,)) is True
    assert one(conn, "SELECT has_schema_privilege(%s, 'public', 'CREATE')", (role,)) is False


WRITES = [
    "INSERT INTO user_credits (user_id, total_credits) VALUES (%(other)s, 1000000)",
    "UPDATE user_credits SET total_credits = 1000000",
    "DELETE FROM user_credits",
    "TRUNCATE user_credits",
    "INSERT INTO credit_usage_log (user_id, amount, type, source)"
    " VALUES (%(me)s, 1000000, 'credit', 'forged')",
    "UPDATE credit_usage_log SET amount = 1000000",
    "DELETE FROM credit_usage_log",
    "TRUNCATE credit_usage_log",
    "INSERT INTO team_credit_sharing (team_admin_id, team_member_id) VALUES (%(other)s, %(me)s)",
    "UPDATE team_credit_sharing SET team_member_id = %(me)s",
    "DELETE FROM team_credit_sharing",
    "TRUNCATE team_credit_sharing",
    "UPDATE role_credits SET credits = 1000000",
    "INSERT INTO credits_internal.install_record (created_users_table) VALUES (true)",
]


@pytest.mark.parametrize("role", ["credits_user", "credits_admin"])
@pytest.mark.parametrize("write", WRITES)
def test_direct_writes_are_refused(conn: Conn, role: str, write: str) -> None:
    me, other = add_users(conn, "member", "team_admin")
    before = state(conn)
    with acting(conn, role, me):
        refused(conn, write, {"me": me, "other": other})
    assert state(conn) == before


ADMIN_CALLS = [
    "SELECT backfill_user_credits()",
    "SELECT grant_credits(%(me)s, 1000)",
    "SELECT refund_credits(%(log_id)s)",
    "SELECT add_team_member(%(admin)s, %(me)s)",
    "SELECT remove_team_member(%(admin)s, %(member)s)",
    "SELECT * FROM verify_credit_integrity()",
    "SELECT credit_allocation_report()",
    "SELECT * FROM credits_backfill_candidates",
    "SELECT * FROM role_credits",
]


@pytest.mark.parametrize("call", ADMIN_CALLS)
def test_admin_functions_are_refused_to_credits_user(conn: Conn, call: str) -> None:
    me, admin, member = add_users(conn, "member", "team_admin", "member")
    add_member(conn, admin, member)
    log_id = debit(conn, me, 10)["log_id"]
    before = state(conn)
    with acting(conn, "credits_user", me):
        refused(conn, call, {"me": me, "admin": admin, "member": member, "log_id": log_id})
    assert state(conn) == before


@pytest.mark.parametrize("call", ADMIN_CALLS)
def test_credits_admin_may_call_admin_functions(conn: Conn, call: str) -> None:
    me, admin, member = add_users(conn, "member", "team_admin", "member")
    add_member(conn, admin, member)
    log_id = debit(conn, me, 10)["log_id"]
    with acting(conn, "credits_admin"):
        conn.execute(call, {"me": me, "admin": admin, "member": member, "log_id": log_id})


def test_credits_user_may_debit_only_itself(conn: Conn) -> None:
    me, other = add_users(conn, "member", "member")
    with acting(conn, "credits_user", me):
        spent = debit(conn, me, 50)
        assert spent["account_user_id"] == me and spent["remaining_credits"] == 300
        before = state(conn)
        message = refused(conn, "SELECT debit_credits(%s, 10)", (other,))
        assert other in message
        refused(conn, "SELECT debit_credits(%s, 10, 'usage', NULL, 'key-1')", (other,))
        # NULL is nobody's account: refused before it could be named CR005.
        refused(conn, "SELECT debit_credits(NULL, 10)")
        assert state(conn) == before
    assert balance(conn, me) == (350, 50, 300)
    assert balance(conn, other) == (350, 0, 350)


def test_credits_user_without_an_identity_may_debit_nobody(conn: Conn) -> None:
    (me,) = add_users(conn, "member")
    with acting(conn, "credits_user", None):
        refused(conn, "SELECT debit_credits(%s, 10)", (me,))
        refused(conn, "SELECT get_credit_balance(%s)", (me,))
    assert log_rows(conn, me) == [(350, "credit", "signup", "signup allocation for role member")]


def test_credits_user_may_read_only_its_own_balance(conn: Conn) -> None:
    me, other = add_users(conn, "member", "admin")
    with acting(conn, "credits_user", me):
        assert one(conn, "SELECT get_credit_balance(%s)", (me,))["spendable"] == 350
        refused(conn, "SELECT get_credit_balance(%s)", (other,))
        refused(conn, "SELECT get_credit_balance(NULL)")


def test_a_team_member_spends_from_the_pool_as_itself(conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    with acting(conn, "credits_user", member):
        spent = debit(conn, member, 1000)
        assert spent["account_user_id"] == admin and spent["from_team_pool"] is True
        # The pool is the admin's account, but it is not the member's to name.
        refused(conn, "SELECT debit_credits(%s, 10)", (admin,))
    assert balance(conn, admin) == (5000, 1000, 4000)


@pytest.mark.parametrize("role", ["credits_admin", None])
def test_admins_and_superusers_may_debit_and_read_anyone(conn: Conn, role: str | None) -> None:
    me, other = add_users(conn, "member", "member")
    if role is None:
        debit(conn, other, 10)
        assert one(conn, "SELECT get_credit_balance(%s)", (other,))["spendable"] == 340
        return
    with acting(conn, role, me):
        assert debit(conn, other, 10)["remaining_credits"] == 340
        assert one(conn, "SELECT get_credit_balance(%s)", (other,))["spendable"] == 340


def test_membership_of_credits_admin_counts_through_a_login_role(conn: Conn) -> None:
    # The caller's role is the session's role (SET ROLE), not the function owner.
    ensure_role(conn, "credits_test_service")
    conn.execute("GRANT credits_admin TO credits_test_service")
    (other,) = add_users(conn, "member")
    with acting(conn, "credits_test_service"):
        assert debit(conn, other, 10)["remaining_credits"] == 340


def test_credits_current_user_id_reads_the_setting(conn: Conn) -> None:
    (me,) = add_users(conn, "member")
    with acting(conn, "credits_user", me):
        assert str(one(conn, "SELECT credits_current_user_id()")) == me
    with acting(conn, "credits_user", None):
        assert one(conn, "SELECT credits_current_user_id()") is None
    with acting(conn, "credits_user", "not-a-uuid"):
        refused(conn, "SELECT credits_current_user_id()", sqlstate="22P02")
        refused(conn, "SELECT debit_credits(%s, 10)", (me,), sqlstate="22P02")
    assert balance(conn, me) == (350, 0, 350)
