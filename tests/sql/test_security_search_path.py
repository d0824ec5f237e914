"""A caller's search_path cannot redirect the functions to other tables or functions."""

from __future__ import annotations

from tests.support.helpers import (
    Conn,
    add_users,
    add_users_without_credits,
    balance,
    ledger_mismatches,
)
from tests.support.security import acting, one
from tests.support.spending import debit, grant

HOSTILE = """
CREATE SCHEMA evil;
CREATE TABLE evil.users (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), role text);
CREATE TABLE evil.role_credits (role text PRIMARY KEY, credits integer, team_member_limit integer);
INSERT INTO evil.role_credits VALUES ('member', 999999, 9);
CREATE TABLE evil.user_credits (user_id uuid PRIMARY KEY, total_credits integer,
    used_credits integer DEFAULT 0, remaining_credits integer DEFAULT 999999,
    created_at timestamptz DEFAULT now(), last_updated timestamptz DEFAULT now());
CREATE TABLE evil.credit_usage_log (id bigint GENERATED ALWAYS AS IDENTITY, user_id uuid,
    actor_user_id uuid, amount integer, type text, source text, description text,
    idempotency_key text, refund_of bigint, created_at timestamptz DEFAULT now());
CREATE TABLE evil.team_credit_sharing (team_admin_id uuid, team_member_id uuid);
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql
    AS $$ SELECT 'epoch'::timestamptz $$;
CREATE FUNCTION evil.pg_advisory_xact_lock(bigint) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'fooled: evil.pg_advisory_xact_lock'; END $$;
CREATE FUNCTION evil.hashtextextended(text, bigint) RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'fooled: evil.hashtextextended'; END $$;
CREATE FUNCTION evil.nullif(text, text) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'fooled: evil.nullif'; END $$;
"""

EVIL_TABLES = ("users", "user_credits", "credit_usage_log", "team_credit_sharing")


def test_a_hostile_schema_first_on_the_path_changes_nothing(conn: Conn) -> None:
    conn.execute(HOSTILE)
    waiting = add_users_without_credits(conn, "member")
    # evil before pg_catalog: unqualified functions would be evil's too.
    conn.execute("SET search_path = evil, pg_catalog, public")
    signed_up = [r[0] for r in conn.execute(
        "INSERT INTO public.users (role) VALUES ('member'), ('admin') RETURNING id::text"
    ).fetchall()]
    report = one(conn, "SELECT public.backfill_user_credits()")
    assert report["users_backfilled"] == 1 and report["credits_allocated"] == 350
    assert debit(conn, signed_up[0], 100)["remaining_credits"] == 250
    assert grant(conn, signed_up[1], 5)["remaining_credits"] == 1005
    assert one(conn, "SELECT public.get_credit_balance(%s)", (waiting[0],))["spendable"] == 350
    last_updated = one(conn, "SELECT last_updated FROM public.user_credits WHERE user_id = %s",
                       (signed_up[0],))
    assert last_updated.year > 1970
    conn.execute("RESET search_path")
    for table in EVIL_TABLES:
        assert one(conn, f"SELECT count(*) FROM evil.{table}") == 0, table
    assert balance(conn, signed_up[0]) == (350, 100, 250)
    assert balance(conn, signed_up[1]) == (1005, 0, 1005)
    assert balance(conn, waiting[0]) == (350, 0, 350)
    assert ledger_mismatches(conn) == []


def test_temporary_tables_cannot_shadow_the_ledger(conn: Conn) -> None:
    # Without pg_temp named last in the functions' search_path, a session's
    # temporary tables come first for table names, even inside a SECURITY
    # DEFINER function: the debit would "succeed" against a fake balance.
    (me,) = add_users(conn, "member")
    with acting(conn, "credits_user", me):
        conn.execute("CREATE TEMP TABLE user_credits (user_id uuid, total_credits integer,"
                     " used_credits integer, remaining_credits integer,"
                     " last_updated timestamptz)")
        conn.execute("INSERT INTO pg_temp.user_credits VALUES (%s, 1, 0, 1000000, now())", (me,))
        conn.execute("CREATE TEMP TABLE credit_usage_log (id serial, user_id uuid,"
                     " amount integer, type text, source text, description text)")
        spent = debit(conn, me, 300)
        assert spent["remaining_credits"] == 50
        balance_seen = one(conn, "SELECT get_credit_balance(%s)", (me,))
        assert balance_seen["own"]["remaining_credits"] == 50
        assert one(conn, "SELECT count(*) FROM pg_temp.credit_usage_log") == 0
        conn.execute("DROP TABLE pg_temp.user_credits, pg_temp.credit_usage_log")
    assert balance(conn, me) == (350, 300, 50)
    assert ledger_mismatches(conn) == []
