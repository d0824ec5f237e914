"""End to end in headless Chromium: sign in, open the admin page, backfill with the confirm step.

Needs a Chromium binary (Debian: ``apt-get install chromium``; or CHROMIUM_PATH) and
Playwright for Python (``pip install playwright``; its own browser download is not
used). Skipped, with the reason, when either is missing. The screenshot goes to
tests/artifacts/admin-backfill.png.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from credits_db.http import create_app, demo_token_auth
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, add_users_without_credits, balance
from tests.support.http_api import SECRET, token

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
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


def test_admin_backfills_credits_in_a_browser(
    db: Database, conn: Conn, browser_page: Any, live_server: str
) -> None:
    from playwright.sync_api import expect

    [operator] = add_users(conn, "super_admin")
    waiting = add_users_without_credits(conn, "member", "team_admin", "RecruitPro")
    page = browser_page

    page.goto(f"{live_server}/admin/credits")
    expect(page.get_by_role("heading", name="Sign in to credits administration")).to_be_visible()
    page.get_by_label("Access token").fill(token(operator, admin=True))
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("heading", level=1, name="Credits administration")).to_be_visible()
    expect(page.locator("#users-without-credits")).to_have_text("3")
    expect(page.get_by_role("table", name="Users and credits per role")).to_contain_text(
        "RecruitPro")

    page.get_by_role("button", name="Backfill Credits").click()
    expect(page.get_by_role("heading", name="Backfill credits: are you sure?")).to_be_visible()
    expect(page.locator("#preview")).to_contain_text("will allocate 6,350 credits")
    assert all(balance(conn, user) is None for user in waiting)

    confirm = page.get_by_role("button", name="Confirm backfill")
    expect(confirm).to_be_focused()  # autofocus: Enter confirms, Tab reaches Cancel
    page.keyboard.press("Enter")

    status = page.get_by_role("status")
    expect(status).to_contain_text("Backfill complete")
    expect(status).to_contain_text("Allocated 6,350 credits to 3 users.")
    expect(page.locator("#users-without-credits")).to_have_text("0")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-backfill.png"), full_page=True)

    assert [balance(conn, user) for user in waiting] == [
        (350, 0, 350), (5000, 0, 5000), (1000, 0, 1000)]
