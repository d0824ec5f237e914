"""backfill_user_credits_batch(): walking users by primary key, a window per call."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

import credits_db
from tests.support.backfill import run_together
from tests.support.databases import Database
from tests.support.helpers import (
    Conn,
    add_users,
    add_users_without_credits,
    balance,
    ledger_mismatches,
)


def batch(conn: Conn, after: str | None, limit: int) -> dict[str, Any]:
    row = conn.execute("SELECT backfill_user_credits_batch(%s, %s)", (after, limit)).fetchone()
    assert row is not None
    result: dict[str, Any] = row[0]
    return result


def test_walk_visits_each_window_once_in_key_order(conn: Conn) -> None:
    waiting = add_users_without_credits(conn, "member", "admin", None, "Boss", "super_admin")
    allocated = add_users(conn, "team_admin")  # has credits already: scanned, left alone
    ordered = sorted(waiting + allocated, key=uuid.UUID)
    seen: list[str] = []
    after: str | None = None
    while True:
        result = batch(conn, after, 2)
        if result["last_user_id"] is None:
            assert result == {"users_scanned": 0, "users_backfilled": 0, "credits_allocated": 0,
                              "fallback_role_users": 0, "by_role": {}, "users_skipped": 0, "dry_run": False,
                              "last_user_id": None}
            break
        window = ordered[len(seen):len(seen) + 2]
        assert result["users_scanned"] == len(window)
        assert result["last_user_id"] == window[-1]
        assert result["users_backfilled"] == len(set(window) & set(waiting))
        seen += window
        after = result["last_user_id"]
    assert seen == ordered
    assert [balance(conn, u) for u in waiting] == [
        (350, 0, 350), (1000, 0, 1000), (350, 0, 350), (350, 0, 350), (10000, 0, 10000)]
    assert balance(conn, allocated[0]) == (5000, 0, 5000)
    assert conn.execute(
        "SELECT count(*) FROM credit_usage_log WHERE source = 'backfill'").fetchone() == (5,)
    assert ledger_mismatches(conn) == []


@pytest.mark.parametrize("limit", [0, -1, None])
def test_window_size_must_be_positive(conn: Conn, limit: int | None) -> None:
    add_users_without_credits(conn, "member")
    with pytest.raises(psycopg.Error) as caught:
        batch(conn, None, limit)  # type: ignore[arg-type]
    assert caught.value.sqlstate == "22023"
    assert "p_limit must be a positive number of users" in str(caught.value)
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM user_credits").fetchone() == (0,)


def test_python_api_walks_and_rejects_out_of_range_limit(conn: Conn) -> None:
    users = add_users_without_credits(conn, "member", "admin", "member")
    first = credits_db.backfill_batch(conn, limit=2)
    assert (first.users_scanned, first.users_backfilled) == (2, 2)
    assert first.last_user_id == sorted(map(uuid.UUID, users))[1]
    second = credits_db.backfill_batch(conn, after=first.last_user_id, limit=2)
    assert (second.users_scanned, second.users_backfilled) == (1, 1)
    assert credits_db.backfill_batch(conn, after=second.last_user_id).last_user_id is None
    with pytest.raises(credits_db.InvalidArgument):
        credits_db.backfill_batch(conn, limit=2**31)


def test_backfill_all_allocates_a_user_left_behind_the_cursor(db: Database) -> None:
    with db.connect() as conn:
        add_users_without_credits(conn, *["member"] * 6)
        conn.commit()
    behind = "00000000-0000-0000-0000-000000000001"  # sorts before every random uuid

    with db.connect(autocommit=True) as conn:
        def after_each_batch(_allocated: int) -> None:
            # A user whose signup allocation was lost, inserted behind the cursor
            # while the walk is under way.
            if conn.execute("SELECT count(*) FROM users WHERE id = %s", (behind,)).fetchone() \
                    == (0,):
                with conn.transaction():
                    conn.execute("ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
                    conn.execute("INSERT INTO users (id, role) VALUES (%s, 'admin')", (behind,))
                    conn.execute("ALTER TABLE users ENABLE TRIGGER users_allocate_credits")

        summary = credits_db.backfill_all(conn, batch_size=4, on_batch=after_each_batch)
        assert summary.users_backfilled == 7
        assert summary.users_without_credits == 7
        assert summary.users_total == 7
        assert summary.credits_allocated == 6 * 350 + 1000
        assert balance(conn, behind) == (1000, 0, 1000)
        assert ledger_mismatches(conn) == []


def test_two_walks_and_signups_allocate_each_user_exactly_once(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
        conn.execute("INSERT INTO users (role) SELECT (ARRAY['member','admin',NULL])[1 + g % 3]"
                      " FROM generate_series(1, 6000) g")
        conn.execute("ALTER TABLE users ENABLE TRIGGER users_allocate_credits")
        conn.commit()

    def walk() -> int:
        with db.connect(autocommit=True) as conn:
            return credits_db.backfill_all(conn, batch_size=700).users_backfilled

    def signups() -> int:
        with db.connect(autocommit=True) as conn:
            for _ in range(50):
                conn.execute("INSERT INTO users (role) VALUES ('member'), ('team_admin')")
        return 0

    first, second, *_ = run_together([walk, walk, signups, signups])
    assert first + second == 6000
    with db.connect() as conn:
        for table in ("user_credits", "credit_usage_log"):
            assert conn.execute(
                f"SELECT count(*), count(DISTINCT user_id) FROM {table}"
            ).fetchone() == (6200, 6200), table
        assert ledger_mismatches(conn) == []
