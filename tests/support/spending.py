"""Shared helpers for the spending tests (no tests here): calls, state snapshots, integrity."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import pytest

from tests.support.helpers import Conn

T = TypeVar("T")

Rows = list[tuple[Any, ...]]
State = tuple[Rows, Rows, Rows, Rows, Rows]


def state(conn: Conn) -> State:
    """Everything a spending call may change: balances, the ledger, team pools, lots and takes."""
    balances = conn.execute(
        "SELECT user_id, total_credits, used_credits, remaining_credits, last_updated,"
        " tracked_credits FROM user_credits ORDER BY user_id"
    ).fetchall()
    ledger = conn.execute("SELECT * FROM credit_usage_log ORDER BY id").fetchall()
    teams = conn.execute(
        "SELECT team_admin_id, team_member_id FROM team_credit_sharing ORDER BY team_member_id"
    ).fetchall()
    lots = conn.execute("SELECT * FROM credit_lots ORDER BY id").fetchall()
    takes = conn.execute("SELECT * FROM credit_lot_takes ORDER BY log_id, lot_id").fetchall()
    return balances, ledger, teams, lots, takes


def fails_cleanly(conn: Conn, sqlstate: str, query: str, params: Any = None) -> psycopg.Error:
    """Run ``query``, expect ``sqlstate``, and check that nothing changed."""
    before = state(conn)
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(query, params)
    assert caught.value.sqlstate == sqlstate, caught.value
    assert state(conn) == before
    return caught.value


def integrity(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT user_id::text, problem FROM verify_credit_integrity()").fetchall()


def debit(conn: Conn, user: str, amount: int | None, **kwargs: Any) -> dict[str, Any]:
    names = ["p_user_id => %(user)s", "p_amount => %(amount)s"]
    names += [f"p_{name} => %({name})s" for name in kwargs]
    row = conn.execute(
        f"SELECT debit_credits({', '.join(names)})", {"user": user, "amount": amount, **kwargs}
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def grant(conn: Conn, user: str | None, amount: int | None, **kwargs: Any) -> dict[str, Any]:
    names = ["p_user_id => %(user)s", "p_amount => %(amount)s"]
    names += [f"p_{name} => %({name})s" for name in kwargs]
    row = conn.execute(
        f"SELECT grant_credits({', '.join(names)})", {"user": user, "amount": amount, **kwargs}
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def refund(conn: Conn, log_id: int | None) -> dict[str, Any]:
    row = conn.execute("SELECT refund_credits(%s)", (log_id,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def add_member(conn: Conn, admin: str | None, member: str | None) -> None:
    conn.execute("SELECT add_team_member(%s, %s)", (admin, member))


def remove_member(conn: Conn, admin: str | None, member: str | None) -> bool:
    row = conn.execute("SELECT remove_team_member(%s, %s)", (admin, member)).fetchone()
    assert row is not None
    return bool(row[0])


def credit_balance(conn: Conn, user: str | None) -> dict[str, Any]:
    row = conn.execute("SELECT get_credit_balance(%s)", (user,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def run_together(count: int, work: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``work(i)`` in ``count`` threads released at once by a barrier.

    Each result is the return value or the exception raised. Open connections
    before calling this, so that the barrier releases only the calls themselves.
    """
    barrier = threading.Barrier(count)
    results: list[T | BaseException] = [RuntimeError("not run")] * count

    def target(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # reported to the test
            results[i] = exc

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
