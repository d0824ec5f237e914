"""`credits-db serve`: with no database configured, an embedded server, demo users and their
tokens by role; with a URL, that database and how to mint tokens for it. Live HTTP both ways."""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.databases import Database

pytest.importorskip("fastapi", reason="the HTTP API needs the api extra")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_listening(port: int, process: subprocess.Popen[str]) -> None:
    """Poll the port (bounded) until uvicorn accepts connections; fail if the process died."""
    for _attempt in range(600):
        assert process.poll() is None, "credits-db serve exited early"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            select.select([], [], [], 0.05)  # brief back-off between connection attempts
    raise AssertionError("credits-db serve never listened")


DEMO_ROLES = ("member", "admin", "team_admin", "RecruitPro", "super_admin", "Recruiter")


@contextmanager
def serving(tmp_path: Path, *args: str, env: dict[str, str] | None = None
            ) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``credits-db serve ARGS`` on a free port, stopped with SIGTERM afterwards."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("DATABASE_URL", "CREDITS_DB_API_SECRET")}
    environment.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "credits_db.cli", "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=log, text=True, env=environment,
    )
    try:
        yield process, port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
    assert process.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)


def printed_until(process: subprocess.Popen[str], prefix: str) -> list[str]:
    """Lines of stdout up to the one starting with ``prefix`` (printed before uvicorn starts)."""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"never printed {prefix!r}: {lines}")


def get(port: int, path: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def remaining(port: int, token: str) -> int:
    status, body = get(port, "/api/credits/status", token)
    assert status == 200, body
    credits: int = json.loads(body)["remainingCredits"]
    return credits


def test_serve_starts_an_embedded_demo_with_a_token_per_role(tmp_path: Path) -> None:
    with serving(tmp_path) as (process, port):
        lines = printed_until(process, "try: curl")
        # One indented line a user: role, token, then a note in parentheses.
        tokens = {parts[0]: parts[1] for parts in
                  (line.split() for line in lines if line.startswith("  "))}
        assert set(tokens) == set(DEMO_ROLES)
        # The super_admin's token is the one operator token; every other is a user token.
        assert [role for role, token in tokens.items() if token.startswith("admin:")] == [
            "super_admin"]
        assert any("super_admin" in line and "operator token" in line for line in lines)
        assert "paste the super_admin token" in "\n".join(lines)
        wait_until_listening(port, process)
        assert remaining(port, tokens["member"]) == 350
        assert remaining(port, tokens["admin"]) == 1000  # the user whose role is admin
        assert remaining(port, tokens["super_admin"]) == 10000
        assert get(port, "/admin/credits", tokens["super_admin"])[0] == 200
        assert get(port, "/admin/credits", tokens["admin"])[0] == 403


def test_serve_with_a_url_explains_how_to_mint_tokens(tmp_path: Path, db: Database) -> None:
    with db.connect() as conn:
        row = conn.execute("INSERT INTO users (role) VALUES ('team_admin') RETURNING id::text"
                           ).fetchone()
    assert row is not None
    secret = {"CREDITS_DB_API_SECRET": "test-secret"}
    with serving(tmp_path, "--url", db.url, env=secret) as (process, port):
        lines = printed_until(process, "API docs:")
        assert "as it is (nothing migrated or seeded)" in lines[0]
        [recipe] = [line.strip() for line in lines if "make_demo_token" in line]
        # The printed command, run as printed, mints a token the server accepts.
        minted = subprocess.run(shlex.split(recipe.replace("<users.id>", row[0])),
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, **secret}, check=True).stdout.strip()
        assert minted.startswith(f"user:{row[0]}.")
        wait_until_listening(port, process)
        assert remaining(port, minted) == 5000
