"""An overload with an extra defaulted parameter cannot jam credits-db's calls to its own functions.

PL/pgSQL and string-bodied SQL functions resolve names when they run. In a
schema others may CREATE in, ``f(a int)`` beside a planted ``f(a int, x int
DEFAULT 0)`` is "not unique" (42725): every call of ``f`` by name fails, a denial
of service by any role with CREATE on public. The callees are found from the
catalog: every credits-db function in public that another credits-db function
calls in its code (comments and string literals stripped).
"""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg import sql

from tests.support.helpers import Conn, add_users, add_users_without_credits, balance
from tests.support.security import acting, ensure_role, one
from tests.support.spending import add_member, debit, grant, integrity, refund

ATTACKER = "credits_test_attacker"
_COMMENT_OR_STRING = re.compile(r"--[^\n]*|'(?:[^']|'')*'", re.S)


def internal_callees(conn: Conn) -> list[tuple[str, str, str]]:
    """(name, identity arguments, result) of each credits-db function in public that another
    credits-db function calls by name."""
    functions = conn.execute(
        "SELECT p.oid, p.proname, pg_get_function_identity_arguments(p.oid),"
        " pg_get_function_result(p.oid), p.prorettype = 'trigger'::regtype,"
        " coalesce(pg_get_function_sqlbody(p.oid), p.prosrc)"
        " FROM pg_proc p WHERE p.proowner = (SELECT proowner FROM pg_proc"
        "                                    WHERE oid = 'public.debit_credits(uuid,integer,"
        "text,text,text)'::regprocedure)"
        "   AND p.pronamespace IN ('public'::regnamespace, to_regnamespace('credits_internal'))"
    ).fetchall()
    code = {oid: _COMMENT_OR_STRING.sub(" ", body) for oid, *_, body in functions}
    callees = []
    for oid, name, arguments, result, is_trigger, _ in functions:
        called = re.compile(
            rf"(?:(?<![\w.])|(?:public|credits_internal)\.){re.escape(name)}\s*\(")
        if not is_trigger and any(called.search(body) for other, body in code.items()
                                  if other != oid):
            callees.append((name, arguments, result))
    return callees


def plant(conn: Conn, callees: list[tuple[str, str, str]]) -> None:
    """As a role with CREATE on public, add f(<the same arguments>, x integer DEFAULT 0)."""
    ensure_role(conn, ATTACKER)
    conn.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(
        sql.Identifier(ATTACKER)))
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(ATTACKER)))
    try:
        conn.execute("CREATE TABLE public.attacker_marks (name text)")
        conn.execute("GRANT INSERT ON public.attacker_marks TO PUBLIC")
        for name, arguments, result in callees:
            extra = f"{arguments}, " if arguments else ""
            returned = "" if result == "void" or result.startswith("TABLE") \
                or "OUT " in arguments else " NULL"
            conn.execute(
                f"CREATE FUNCTION public.{name}({extra}x_planted integer DEFAULT 0)"
                f" RETURNS {result} LANGUAGE plpgsql AS $planted$ BEGIN"
                f" INSERT INTO public.attacker_marks VALUES ({sql.quote(name)});"
                f" RETURN{returned}; END $planted$"
            )
        if one(conn, "SELECT to_regnamespace('credits_internal')") is not None:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("CREATE FUNCTION credits_internal.current_user_id("
                             "x integer DEFAULT 0) RETURNS uuid LANGUAGE sql RETURN NULL")
    finally:
        conn.execute("RESET ROLE")


def test_internal_calls_are_not_made_ambiguous(conn: Conn) -> None:
    admin, member, spender = add_users(conn, "team_admin", "member", "member")
    [waiting] = add_users_without_credits(conn, "admin")
    callees = internal_callees(conn)
    assert callees, "the catalog names no internal callee: the generation is broken"
    plant(conn, callees)

    with acting(conn, "credits_user", spender):
        assert debit(conn, spender, 10)["remaining_credits"] == 340
        assert one(conn, "SELECT get_credit_balance(%s)", (spender,))["spendable"] == 340
    report = one(conn, "SELECT backfill_user_credits()")
    assert report["users_backfilled"] == 1
    assert one(conn, "SELECT backfill_user_credits_batch(NULL::uuid, 10)")["users_backfilled"] == 0
    add_member(conn, admin, member)
    first = debit(conn, member, 400, idempotency_key="job")
    assert debit(conn, member, 400, idempotency_key="job") == {**first, "replayed": True}
    assert grant(conn, spender, 5, idempotency_key="g")["replayed"] is False
    assert grant(conn, spender, 5, idempotency_key="g")["replayed"] is True
    refund(conn, first["log_id"])
    conn.execute("UPDATE users SET role = 'super_admin' WHERE id = %s", (spender,))
    assert integrity(conn) == []
    assert one(conn, "SELECT credit_allocation_report()")["users_without_credits"] == 0
    assert balance(conn, waiting) == (1000, 0, 1000)
    assert conn.execute("SELECT name FROM public.attacker_marks").fetchall() == []


def test_a_looser_overload_in_public_never_takes_the_python_apis_calls(conn: Conn) -> None:
    import credits_db

    [user] = add_users(conn, "member")
    ensure_role(conn, ATTACKER)
    conn.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(
        sql.Identifier(ATTACKER)))
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(ATTACKER)))
    try:
        # psycopg sends a str as "unknown" and a small int as smallint: without
        # casts, text and integer parameters match them better than uuid.
        conn.execute(
            "CREATE FUNCTION public.debit_credits(p_user_id text, p_amount integer,"
            " p_source text, p_description text, p_idempotency_key text) RETURNS jsonb"
            " LANGUAGE sql AS $planted$ SELECT jsonb_build_object('log_id', 0,"
            " 'account_user_id', p_user_id, 'actor_user_id', NULL, 'amount', p_amount,"
            " 'remaining_credits', 999999, 'from_team_pool', false, 'replayed', false)"
            " $planted$")
        conn.execute(
            "CREATE FUNCTION public.get_credit_balance(p_user_id text) RETURNS jsonb"
            " LANGUAGE sql AS $planted$ SELECT NULL::jsonb $planted$")
    finally:
        conn.execute("RESET ROLE")
    spent = credits_db.debit(conn, user, 25)
    assert spent.remaining_credits == 325 and spent.log_id > 0
    assert credits_db.balance(conn, user).spendable == 325
    assert balance(conn, user) == (350, 25, 325)
