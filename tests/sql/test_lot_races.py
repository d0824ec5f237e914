"""A debit decides on two snapshots whether its account holds tracked lots (revision 0010).

debit_credits() first tries the one-statement hot path, which refuses an
account whose tracked_credits is above 0; then, in a later statement (a new
snapshot at READ COMMITTED), it asks again whether tracked_credits is above 0
and only then debits lot by lot (take_from_lots). A sweep that expires the
account's last tracked credits and commits between those two statements makes
both answers "no": the hot path refused because there were tracked credits,
the second look finds none, and the own account is never debited although it
could pay the whole amount before and after the sweep. The debit is refused
(CR001) or, in a team, charged to the pool.

The window is between two statements inside the function, so the test holds
the debit there: an AFTER UPDATE statement trigger on user_credits (it fires
even when the hot path's UPDATE matches no row) waits on an advisory lock the
test holds, in the debit's session only. The test sees the debit wait (in
pg_blocking_pids), runs the sweep, and lets the debit go on.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.support.databases import Database
from tests.support.helpers import Conn
from tests.support.sessions import Background, blocked_or_done

PAUSE_LOCK = 727_001

# Test instrumentation: holds a session that asked for it (credits_test.pause
# = 'once') after its first UPDATE statement on user_credits.
PAUSE_SQL = f"""
CREATE FUNCTION public.test_pause_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('credits_test.pause', true) = 'once' THEN
        PERFORM set_config('credits_test.pause', 'done', false);
        PERFORM pg_advisory_lock({PAUSE_LOCK});
        PERFORM pg_advisory_unlock({PAUSE_LOCK});
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER test_pause_once AFTER UPDATE ON public.user_credits
    FOR EACH STATEMENT EXECUTE FUNCTION public.test_pause_once();
"""


def debit(conn: psycopg.Connection[Any], user: str, amount: int) -> dict[str, Any] | str:
    """debit_credits' result, or the SQLSTATE it raised."""
    try:
        row = conn.execute("SELECT debit_credits(%s, %s)", (user, amount)).fetchone()
    except psycopg.Error as exc:
        return exc.sqlstate or "?"
    assert row is not None
    result: dict[str, Any] = row[0]
    return result


@pytest.mark.parametrize("in_team", [False, True])
def test_a_sweep_between_the_debits_two_looks_does_not_skip_the_own_account(
        db: Database, conn: Conn, in_team: bool) -> None:
    """A member with 350 untracked credits and a lapsed lot of 10 debits 100
    while a sweep expires the lot: before the sweep and after it the own
    account can pay (spendable 350 either way), so the debit is the own
    account's, never CR001 nor the team pool's."""
    admin, member = str(uuid.uuid4()), str(uuid.uuid4())
    conn.execute("INSERT INTO users (id, role) VALUES (%s, 'team_admin'), (%s, 'member')",
                 (admin, member))
    if in_team:
        conn.execute("SELECT add_team_member(%s, %s)", (admin, member))
    conn.execute("SELECT grant_credits(%s, 10, p_expires_at => now() + interval '1 day')",
                 (member,))
    conn.execute("UPDATE credit_lots SET expires_at = now() - interval '1 second'"
                 " WHERE user_id = %s AND expires_at IS NOT NULL", (member,))
    conn.execute(PAUSE_SQL)

    with db.connect() as spender:
        spender.execute("SET credits_test.pause = 'once'")
        conn.execute("SELECT pg_advisory_lock(%s)", (PAUSE_LOCK,))
        try:
            call = Background(lambda: debit(spender, member, 100))
            assert blocked_or_done(conn, spender.info.backend_pid, call), "not held"
            report = conn.execute("SELECT expire_credits()").fetchone()
            assert report is not None and report[0]["credits_expired"] == 10, report
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (PAUSE_LOCK,))
        outcome = call.outcome()

    assert isinstance(outcome, dict) and outcome["account_user_id"] == member, outcome
    assert outcome["from_team_pool"] is False and outcome["remaining_credits"] == 250, outcome
    assert conn.execute("SELECT * FROM verify_credit_integrity()").fetchall() == []
