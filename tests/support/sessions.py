"""Two sessions at once: a call run in the background, and knowing from the server that it waits.

Whether a session is blocked is asked of the server (pg_blocking_pids), never
inferred from a sleep; each poll is a round trip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

POLL_TIMEOUT = 30.0


class Background:
    """Run ``work`` in a thread; :meth:`outcome` joins it and returns its result or exception."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self._result: list[Any] = []

        def target() -> None:
            try:
                self._result.append(work())
            except BaseException as exc:  # handed to the test
                self._result.append(exc)

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """True while the call has not returned or raised."""
        return self._thread.is_alive()

    def outcome(self) -> Any:
        """The call's return value, or the exception it raised."""
        self._thread.join(POLL_TIMEOUT)
        assert not self._thread.is_alive(), "the background call did not finish"
        return self._result[0]


def blocked_or_done(observer: psycopg.Connection[Any], pid: int, call: Background) -> bool:
    """Wait until backend ``pid`` is blocked by another session (True) or ``call`` ended (False)."""
    deadline = time.monotonic() + POLL_TIMEOUT
    while time.monotonic() < deadline:
        row = observer.execute("SELECT cardinality(pg_blocking_pids(%s)) > 0", (pid,)).fetchone()
        if row == (True,):
            return True
        if not call.running:
            return False
    raise AssertionError(f"backend {pid} neither blocked nor finished")


def sqlstate(outcome: Any) -> str | None:
    """The SQLSTATE of a failed call's exception (psycopg's, or the one a credits_db error wraps)."""
    if isinstance(outcome, psycopg.Error):
        return outcome.sqlstate
    cause = getattr(outcome, "__cause__", None)
    if isinstance(cause, psycopg.Error):
        return cause.sqlstate
    return None
