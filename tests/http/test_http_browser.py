"""End to end in headless Chromium: sign in, open the admin page, backfill with the confirm step.

Needs a Chromium binary (Debian: ``apt-get install chromium``; or CHROMIUM_PATH) and
Playwright for Python (``pip install playwright``; its own browser download is not
used). Skipped, with the reason, when either is missing. The screenshots go to
tests/artifacts/admin-*.png, or with CREDITS_DB_SCREENSHOTS=docs to the committed
docs/images/ (scripts/admin_screenshots.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from credits_db.http import create_app, demo_token_auth
from scripts.admin_screenshots import capture, seed_history
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, balance
from tests.support.http_api import SECRET, token

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """A Playwright page in the system's headless Chromium (skips when there is none)."""
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium: apt-get install chromium (or set CHROMIUM_PATH)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed: pip install playwright")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1000, "height": 900})
        finally:
            browser.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def live_server(db: Database) -> Iterator[str]:
    """The app served by uvicorn in a background thread on a free port; yields its URL."""
    port = _free_port()
    config = uvicorn.Config(create_app(db.url, demo_token_auth(SECRET), max_size=4),
                            host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _backfill_rows(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM credit_usage_log WHERE source = 'backfill'"
                       ).fetchone()
    assert row is not None
    return int(row[0])


def test_admin_backfills_credits_in_a_browser(
    db: Database, conn: Conn, browser_page: Any, live_server: str
) -> None:
    from playwright.sync_api import expect

    waiting = seed_history(conn)
    [operator] = add_users(conn, "super_admin")
    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 900})  # the screenshots' width
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url)
            if request.method == "POST" else None)

    page.goto(f"{live_server}/admin/credits")
    expect(page.get_by_role("heading", name="Sign in to credits administration")).to_be_visible()
    page.get_by_label("Access token").fill(token(operator, admin=True))
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("heading", level=1, name="Credits administration")).to_be_visible()
    expect(page.locator("#users-without-credits")).to_have_text("11")
    expect(page.get_by_role("table", name="Users and credits per role")).to_contain_text(
        "RecruitPro")
    # Each chart is an image named by its title and description, beside its table.
    for chart, table in (("Credits by role", "Users and credits per role"),
                         ("Allocations and spending per day", "Credits per day and source"),
                         ("Fullest team pools", "Team pools with the most members")):
        expect(page.get_by_role("img", name=chart)).to_be_visible()
        expect(page.get_by_role("table", name=table)).to_be_visible()

    # Two Enters no longer run it: Enter on the button opens the confirm page, where
    # nothing has focus, so the second Enter does nothing.
    page.get_by_role("button", name="Backfill Credits").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Backfill credits: are you sure?")).to_be_visible()
    expect(page.locator("#preview")).to_contain_text("11 users have no credits")
    assert page.evaluate("document.activeElement === document.body")
    sent = len(posts)
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement === document.body")
    expect(page.get_by_role("heading", name="Backfill credits: are you sure?")).to_be_visible()
    assert len(posts) == sent
    assert all(balance(conn, user) is None for user in waiting)
    capture(page, "confirm")

    page.get_by_role("button", name="Confirm backfill").click()
    status = page.get_by_role("status")
    # The job page reloads itself while the job runs; wait on its own status.
    expect(status).to_contain_text("Backfill complete", timeout=30_000)
    expect(status).to_contain_text("Allocated 10,450 credits to 11 users.")
    job_url = page.url
    assert "/admin/credits/backfill/jobs/" in job_url
    capture(page, "backfill-job")

    # Reloading the page after the POST is a GET of the job: nothing runs again.
    sent = len(posts)
    page.reload()
    expect(status).to_contain_text("Allocated 10,450 credits to 11 users.")
    assert page.url == job_url and len(posts) == sent
    assert _backfill_rows(conn) == 11

    page.get_by_role("link", name="Back to the admin page").click()
    expect(page.locator("#users-without-credits")).to_have_text("0")
    expect(page.locator("#last-backfill")).to_contain_text("All time: 11 users allocated")
    expect(page.locator("#integrity")).to_contain_text("OK")
    capture(page, "page")

    page.get_by_label("User id or email").fill("user14@example.com")
    page.get_by_role("button", name="Look up").click()
    expect(page.get_by_role("heading", name="User", exact=True)).to_be_visible()
    expect(page.locator("dl")).to_contain_text("team_admin")
    capture(page, "lookup")

    assert all(balance(conn, user) is not None for user in waiting)
