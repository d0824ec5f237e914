"""Backfills and signups at the same time, on separate connections."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg

from tests.support.backfill import run_together
from tests.support.databases import Database
from tests.support.helpers import add_users_without_credits, ledger_mismatches


def test_two_backfills_and_signups_allocate_each_user_exactly_once(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
        conn.execute(
            "INSERT INTO users (role) SELECT (ARRAY['member','admin',NULL])[1 + g % 3]"
            " FROM generate_series(1, 20000) g"
        )
        conn.execute("ALTER TABLE users ENABLE TRIGGER users_allocate_credits")

    def backfill(limit: int | None) -> Callable[[], int]:
        def work() -> int:
            with db.connect() as conn:
                backfilled = 0
                while True:
                    row = conn.execute("SELECT backfill_user_credits(false, %s)", (limit,)).fetchone()
                    assert row is not None
                    backfilled += int(row[0]["users_backfilled"])
                    if row[0]["users_without_credits"] <= row[0]["users_backfilled"]:
                        return backfilled
        return work

    def signups() -> int:
        with db.connect() as conn:
            for _ in range(50):
                conn.execute("INSERT INTO users (role) VALUES ('member'), ('team_admin')")
        return 0

    results = run_together([backfill(None), backfill(3000), signups, signups])
    assert results[0] + results[1] == 20000
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (20200,)
        assert conn.execute(
            "SELECT count(*), count(DISTINCT user_id) FROM user_credits"
        ).fetchone() == (20200, 20200)
        assert conn.execute(
            "SELECT count(*), count(DISTINCT user_id) FROM credit_usage_log"
        ).fetchone() == (20200, 20200)
        assert ledger_mismatches(conn) == []


def wait_until_blocked(observer: psycopg.Connection[Any], pid: int) -> None:
    """Return once backend ``pid`` waits on a lock (asks the server; never sleeps blindly)."""
    while observer.execute(
        "SELECT cardinality(pg_blocking_pids(%s)) > 0", (pid,)
    ).fetchone() != (True,):
        observer.execute("SELECT pg_sleep(0.01)")


def test_second_backfill_waits_for_the_first_and_finds_nothing_left(db: Database) -> None:
    with db.connect() as setup:
        add_users_without_credits(setup, "member", "admin", "team_admin")
    with db.connect(autocommit=False) as first, db.connect() as second, \
            db.connect() as observer:
        row = first.execute("SELECT backfill_user_credits()").fetchone()
        assert row is not None and row[0]["users_backfilled"] == 3
        second_pid = second.info.backend_pid
        outcome: list[Any] = []
        thread = threading.Thread(
            target=lambda: outcome.append(
                second.execute("SELECT backfill_user_credits()").fetchone()
            )
        )
        thread.start()
        wait_until_blocked(observer, second_pid)
        first.commit()
        thread.join()
        assert outcome[0][0]["users_backfilled"] == 0
        assert observer.execute("SELECT count(*) FROM credit_usage_log").fetchone() == (3,)
