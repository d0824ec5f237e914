"""The admin page's backfill job over HTTP: progress while it runs, one job at a time,
the confirm page's states, and a failed job (what committed stays; a rerun finishes).

The job is held mid-way by a row lock the test takes on the user of the second
batch (batches of one user); the test waits for the job's session to block on it
(asked of the server), never for a time.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import psycopg

from tests.support.admin_page import (
    backfill_jobs_finished,
    csrf_of,
    lock_waiter_appears,
    run_admin,
    sign_in,
)
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, add_users_without_credits, balance
from tests.support.http_api import token


def _lock_user(db: Database, user_id: str) -> psycopg.Connection[Any]:
    """A session holding ``FOR UPDATE`` on one user until it rolls back."""
    locker = db.connect(autocommit=False)
    locker.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user_id,))
    return locker


async def _start(client: httpx.AsyncClient) -> httpx.Response:
    confirm = await client.get("/admin/credits/backfill")
    return await client.post("/admin/credits/backfill", data={"csrf": csrf_of(confirm.text)})


def test_progress_while_running_and_one_job_at_a_time(db: Database, conn: Conn) -> None:
    [operator] = add_users(conn, "member")
    waiting = sorted(add_users_without_credits(conn, "member", "admin", "team_admin"))
    locker = _lock_user(db, waiting[1])  # batches of one: the second batch waits

    async def scenario(client: httpx.AsyncClient) -> None:
        await sign_in(client, token(operator, admin=True))
        started = await _start(client)
        assert started.status_code == 303
        job_url = started.headers["location"]
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as observer:
            await lock_waiter_appears(observer)

        running = await client.get(job_url)
        assert running.status_code == 200
        assert "Backfill running" in running.text
        assert '<meta http-equiv="refresh" content="1">' in running.text
        assert '<progress id="progress" max="3" value="1"' in running.text
        # The operator (who has credits) may be a batch of its own: 1 or 2 batches.
        assert re.search(r"1 of 3 users allocated so far; committed batches: [12]\.",
                         running.text)

        # A second confirming POST, or the confirm page, finds the running job.
        again = await _start(client)
        assert again.status_code == 303 and again.headers["location"] == job_url
        confirm = await client.get("/admin/credits/backfill")
        assert "A backfill is already running" in confirm.text
        assert 'id="confirm"' not in confirm.text
        page = await client.get("/admin/credits")
        assert f'href="{job_url}" id="running-job"' in page.text
        assert 'id="backfill"' not in page.text

        locker.rollback()
        await backfill_jobs_finished()
        done = await client.get(job_url)
        assert "Backfill complete" in done.text
        assert "Allocated 6,350 credits to 3 users." in done.text
        assert 'http-equiv="refresh"' not in done.text

        # Now nothing waits: the confirm page offers no Confirm.
        nothing = await client.get("/admin/credits/backfill")
        assert "there is nothing to backfill" in nothing.text
        assert 'id="confirm"' not in nothing.text and "<form method=\"post\" action=\"/admin/" \
            "credits/backfill\"" not in nothing.text

    try:
        run_admin(db, scenario, batch_size=1)
    finally:
        locker.close()
    assert [balance(conn, user) is not None for user in waiting] == [True, True, True]


def test_a_failed_job_keeps_what_committed_and_a_rerun_finishes(
        db: Database, conn: Conn) -> None:
    [operator] = add_users(conn, "member")
    waiting = sorted(add_users_without_credits(conn, "member", "admin", "team_admin"))
    locker = _lock_user(db, waiting[1])

    async def scenario(client: httpx.AsyncClient) -> None:
        await sign_in(client, token(operator, admin=True))
        # lock_timeout=1ms on the pool: the second batch fails on the held lock at once.
        job_url = (await _start(client)).headers["location"]
        await backfill_jobs_finished()
        failed = await client.get(job_url)
        assert "Backfill failed" in failed.text
        assert "RetryableError" in failed.text
        assert re.search(r"1 users were allocated by the [12] batches committed", failed.text)
        first = balance(conn, waiting[0])
        assert first is not None and [balance(conn, u) for u in waiting[1:]] == [None, None]
        page = await client.get("/admin/credits")
        assert "Last run from this page (this server process)" in page.text
        assert "failed: RetryableError" in page.text

        locker.rollback()
        rerun = await _start(client)
        await backfill_jobs_finished()
        done = await client.get(rerun.headers["location"])
        # The two still waiting, and only them.
        assert f"Allocated {6350 - first[0]:,} credits to 2 users." in done.text
        unknown = await client.get("/admin/credits/backfill/jobs/" + "0" * 32)
        assert unknown.status_code == 404
        assert "a restart forgets it" in unknown.text

    try:
        run_admin(db, scenario, batch_size=1,
                  kwargs={"autocommit": True, "options": "-c lock_timeout=1"})
    finally:
        locker.close()
    assert all(balance(conn, user) is not None for user in waiting)
