"""Fault injection shared by the fault tests (no tests here): a call in the background,
waits that poll pg_stat_activity (nothing sleeps), a backend killed at COMMIT.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.support.helpers import Conn
from tests.support.sessions import Background

POLL_TIMEOUT = 60.0


def wait_for(conn: Conn, query: str, params: Any, what: str,
             during: Background | None = None) -> tuple[Any, ...]:
    """Poll the server until ``query`` returns a row (no sleeping: each poll is a round trip).

    With ``during``, stop early if that background call ends first.
    """
    deadline = time.monotonic() + POLL_TIMEOUT
    while time.monotonic() < deadline:
        row = conn.execute(query, params).fetchone()
        if row is not None:
            return row
        if during is not None and not during.running:
            raise AssertionError(f"the call ended before {what}: {during.outcome()!r}")
    raise AssertionError(f"timed out waiting for {what}")


def wait_until_waiting_on_a_lock(admin: Conn, pid: int, during: Background) -> None:
    wait_for(admin, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
                    " AND wait_event_type = 'Lock'", (pid,), f"backend {pid} to wait on a lock",
             during)


def terminate(admin: Conn, pid: int) -> None:
    """pg_terminate_backend, then wait until the backend has exited (its locks are released)."""
    row = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
    assert row == (True,)
    wait_for(admin, "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)",
             (pid,), f"backend {pid} to exit")


BLOCK_AT_COMMIT = """
CREATE FUNCTION test_block_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(4242);
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER test_block_at_commit AFTER INSERT ON credit_usage_log
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_block_at_commit();
"""


def killed_at_commit(conn: Conn, work: Callable[[], Any]) -> Any:
    """Run ``work`` in the background with every COMMIT that logs a row held back (a deferred
    trigger waits on a lock ``conn`` holds), kill its backend there; return its outcome."""
    conn.execute(BLOCK_AT_COMMIT)
    conn.execute("SELECT pg_advisory_lock(4242)")
    blocked = Background(work)
    pid = wait_for(conn, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                         " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
                         " AND state = 'active'", (), "the commit to block", blocked)[0]
    terminate(conn, pid)
    outcome = blocked.outcome()
    conn.execute("SELECT pg_advisory_unlock(4242)")
    return outcome
