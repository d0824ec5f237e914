"""`credits-db serve` with no database configured: embedded server, demo users, live HTTP."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

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


def test_serve_starts_an_embedded_demo_and_answers_http(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("DATABASE_URL", "CREDITS_DB_API_SECRET")}
    process = subprocess.Popen(
        [sys.executable, "-m", "credits_db.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=log, text=True, env=environment,
    )
    try:
        assert process.stdout is not None
        tokens: dict[str, str] = {}
        for line in process.stdout:  # the tokens are printed before uvicorn starts
            parts = line.split()
            if len(parts) == 2 and parts[0] in ("member", "admin", "team_admin"):
                tokens[parts[0]] = parts[1]
            if line.startswith("try: curl"):
                break
        assert {"member", "admin"} <= tokens.keys()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/credits/status",
            headers={"Authorization": f"Bearer {tokens['member']}"},
        )
        wait_until_listening(port, process)
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            body = json.loads(response.read())
        assert (body["hasAccount"], body["remainingCredits"]) == (True, 350)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
    assert process.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
