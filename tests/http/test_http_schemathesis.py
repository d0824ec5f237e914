"""Schemathesis fuzzes the HTTP API from its own OpenAPI schema: every check, no failure.

The app (``create_app``: the router, the error handlers, the body cap, /docs) runs
under uvicorn on a free loopback port, on a real database, and ``schemathesis run``
attacks it twice: with a member's token and with an administrator's. Bounded:
a fixed seed and at most ``MAX_EXAMPLES`` cases per operation and phase.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from credits_db.http import create_app, demo_token_auth
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users
from tests.support.http_api import SECRET, token

MAX_EXAMPLES = 15
SEED = 15
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture
def base_url(db: Database) -> Iterator[str]:
    """The app served by uvicorn in a thread, on a socket listening before it starts.

    Connections made before uvicorn accepts wait in the socket's backlog: no polling.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(create_app(db.url, demo_token_auth(SECRET), max_size=4),
                            log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def schemathesis(base_url: str, bearer: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``schemathesis run`` with every check against the app's schema (its cache in ``workdir``)."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(CONFIG),
        "run", f"{base_url}/openapi.json", "--checks", "all",
        "--header", f"Authorization: Bearer {bearer}",
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
        # One worker: hypothesis parsing lambdas in two threads at once trips a CPython
        # 3.11 bug (SystemError: AST constructor recursion depth mismatch).
        "--workers", "1",
        "--request-timeout", "30",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, check=False,
                          cwd=workdir)


@pytest.mark.parametrize("caller", ["member", "admin"])
def test_schemathesis_finds_no_failure(base_url: str, conn: Conn, caller: str,
                                       tmp_path: Path) -> None:
    member, admin = add_users(conn, "member", "team_admin")
    bearer = token(member) if caller == "member" else token(admin, admin=True)
    result = schemathesis(base_url, bearer, tmp_path)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-20_000:]
    # Every operation of the schema was reached (none skipped for want of data or auth).
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", report)
    assert selected and len(set(selected.groups())) == 1, report[-5_000:]
