"""Demo data and the screenshots of the admin page in docs/images/ (admin-*.png).

The browser test (tests/http/test_http_admin_browser.py) calls :func:`seed_history`
on its throwaway database, runs a backfill through the page, and calls
:func:`capture` at each step. The images go to tests/artifacts/ (not committed);
with ``CREDITS_DB_SCREENSHOTS=docs`` they rewrite the committed ones::

    CREDITS_DB_SCREENSHOTS=docs CREDITS_DB_TEST_URL=... .venv/bin/pytest -n 0 \
        tests/http/test_http_browser.py

**Demo data only**: to give the daily chart thirty days, :func:`seed_history`
backdates ``credit_usage_log.created_at`` with the append-only guard trigger
disabled for that one statement; to spread the monthly renewals over the month, it
moves the members' accounts' openings, period ends and allowance expiries back
together. Never do this to a real ledger.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
"""The committed screenshots (shown in the README and docs/admin.md)."""
ARTIFACTS = ROOT / "tests" / "artifacts"
"""Where a plain test run writes them (git-ignored), so it leaves the tree clean."""

ROLES = ("member",) * 10 + ("admin",) * 3 + ("team_admin",) * 3 + ("RecruitPro",) * 3 \
    + ("super_admin",)
SOURCES = ("search", "export", "enrichment")
WAITING_ROLES = ("member",) * 6 + ("RecruitPro",) * 2 + ("team_admin", "admin", None)


def seed_history(conn: psycopg.Connection[Any], *, seed: int = 15) -> list[str]:
    """Users who signed up over 30 days, three team pools, spending every day, and
    users from before the install waiting for the backfill; returns those waiting' ids.

    ``conn`` is an autocommit connection whose role may disable triggers (the
    database owner).
    """
    rng = random.Random(seed)  # noqa: S311 (demo data, not secrets)
    # Members renew monthly (signups after this get an allowance expiring with the period).
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month', rollover_cap = 100"
                 " WHERE role = 'member'")
    ids = [row[0] for row in conn.execute(
        "INSERT INTO users (email, role) SELECT 'user' || n || '@example.com', r"
        " FROM unnest(%s::text[]) WITH ORDINALITY AS t(r, n) ORDER BY n RETURNING id::text",
        (list(ROLES),))]
    admins = [i for i, role in zip(ids, ROLES, strict=True) if role == "team_admin"]
    members = [i for i, role in zip(ids, ROLES, strict=True) if role == "member"]
    for admin, count in zip(admins, (4, 3, 1), strict=True):
        for _ in range(count):
            conn.execute("SELECT add_team_member(%s, %s)", (admin, members.pop()))
    spenders = [i for i, role in zip(ids, ROLES, strict=True)
                if role in ("team_admin", "super_admin")]
    for day in range(30):
        with conn.transaction():
            for _ in range(rng.randint(1, 4)):
                conn.execute("SELECT debit_credits(%s, %s, %s, NULL, NULL)",
                             (rng.choice(spenders), rng.randint(20, 200), rng.choice(SOURCES)))
            with _guard_off(conn):  # this transaction's rows (created_at = now()) to the day
                conn.execute("UPDATE credit_usage_log SET created_at = now() - make_interval("
                             "days => %s) WHERE created_at = now()", (29 - day,))
    with conn.transaction(), _guard_off(conn):  # signups spread by a hash of the user
        conn.execute("UPDATE credit_usage_log SET created_at = created_at - make_interval("
                     "days => abs(hashtext(user_id::text)) % 30) WHERE source = 'signup'")
    _spread_renewals(conn)
    for _ in range(6):  # promotions that lapse within the month
        conn.execute("SELECT grant_credits(%s, %s, 'promo', 'a promotion', NULL,"
                     " p_expires_at => now() + make_interval(days => %s))",
                     (rng.choice(ids), rng.choice((50, 100, 250)), rng.randint(2, 25)))
    with conn.transaction():
        conn.execute("ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
        waiting = [row[0] for row in conn.execute(
            "INSERT INTO users (email, role) SELECT 'early' || n || '@example.com', r"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS t(r, n) ORDER BY n"
            " RETURNING id::text", (list(WAITING_ROLES),))]
        conn.execute("ALTER TABLE users ENABLE TRIGGER users_allocate_credits")
    return waiting


def _spread_renewals(conn: psycopg.Connection[Any]) -> None:
    """Move each member account's opening back by 0 to 29 days (the n-th account by id
    7n days, modulo 30: every run spreads them alike, from the fourth account on some
    renew within a week), with its period end and the allowance lots expiring then:
    their renewals spread over the coming month instead of all falling on one day."""
    with conn.transaction():
        conn.execute(
            "WITH moved AS (SELECT user_id, period_ends_at AS ends_at,"
            " make_interval(days => (row_number() OVER (ORDER BY user_id) * 7)::integer % 30)"
            " AS back"
            " FROM user_credits WHERE period_ends_at IS NOT NULL),"
            " lots AS (UPDATE credit_lots l SET expires_at = l.expires_at - m.back"
            " FROM moved m WHERE l.user_id = m.user_id AND l.expires_at = m.ends_at)"
            " UPDATE user_credits uc SET created_at = uc.created_at - m.back,"
            " period_ends_at = uc.period_ends_at - m.back"
            " FROM moved m WHERE uc.user_id = m.user_id")


@contextmanager
def _guard_off(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """The append-only guard off, inside the caller's transaction (demo data only)."""
    conn.execute("ALTER TABLE credit_usage_log DISABLE TRIGGER credit_usage_log_append_only")
    yield
    conn.execute("ALTER TABLE credit_usage_log ENABLE TRIGGER credit_usage_log_append_only")


def capture(page: Any, name: str) -> Path:
    """A full-page screenshot of ``page`` as admin-<name>.png, in :data:`ARTIFACTS`, or
    in :data:`IMAGES` when ``CREDITS_DB_SCREENSHOTS=docs``."""
    folder = IMAGES if os.environ.get("CREDITS_DB_SCREENSHOTS") == "docs" else ARTIFACTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"admin-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
