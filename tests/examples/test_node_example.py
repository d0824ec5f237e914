"""The Node.js example (examples/node) with the machine's Node against real PostgreSQL.

The demo runs as a child process printing one JSON line a step; with ``--pause`` it
waits for a line on stdin before its keyed debit and before each retry, which is
how these tests order things (no sleeps): they lose the debit's answer after its
commit (a proxy), kill its backend while it waits on a row lock, or let it hit a
lock timeout, then let the retry go. The HTTP mapping is compared with the Python
router's (credits_db.http.errors), so the two cannot drift apart.

Skipped only when ``node`` is not installed (.ci/run installs Debian's nodejs and npm);
a missing ``node_modules`` is installed here with ``npm ci``.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

import credits_db
from credits_db import errors
from credits_db.http.errors import error_content
from tests.support.databases import Database
from tests.support.faults import POLL_TIMEOUT, terminate, wait_for
from tests.support.helpers import Conn, balance
from tests.support.proxy import CuttableProxy
from tests.support.spending import integrity

NODE_DIR = Path(__file__).resolve().parents[2] / "examples" / "node"
NODE = shutil.which("node")
APPLICATION_NAME = "credits-db-node-demo"  # what demo.js connects as

pytestmark = pytest.mark.skipif(
    NODE is None, reason="Node.js is not installed (.ci/run installs Debian's nodejs and npm)")


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the example's packages installed (npm ci from the lockfile)."""
    assert NODE is not None
    if not (NODE_DIR / "node_modules" / "pg").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "node is installed but npm is not: install npm, or run .ci/run"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
    return NODE


class Demo:
    """``node demo.js`` in the background; its JSON lines are read with a deadline."""

    def __init__(self, node: str, url: str, *flags: str) -> None:
        self.process = subprocess.Popen(
            [node, "demo.js", *flags, url], cwd=NODE_DIR, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _line(self, what: str) -> str | None:
        try:
            return self._lines.get(timeout=POLL_TIMEOUT)
        except queue.Empty:
            self.process.kill()
            assert self.process.stderr is not None
            raise AssertionError(f"demo.js printed nothing more while waiting for {what}: "
                                 f"{self.process.stderr.read()}") from None

    def next(self, step: str) -> dict[str, Any]:
        """The next line, which must be ``step``."""
        line = self._line(repr(step))
        if line is None:
            assert self.process.stderr is not None
            raise AssertionError(f"demo.js ended before {step!r}: {self.process.stderr.read()}")
        printed: dict[str, Any] = json.loads(line)
        assert printed["step"] == step, printed
        return printed

    def go(self) -> None:
        """Let a paused demo carry on."""
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def finish(self) -> dict[str, dict[str, Any]]:
        """The steps after the keyed debit, by name (the errors by ``what``); exit status 0."""
        steps: dict[str, dict[str, Any]] = {}
        while (line := self._line("its end")) is not None:
            printed = json.loads(line)
            steps[printed.get("what", printed["step"])] = printed
        assert self.process.wait(POLL_TIMEOUT) == 0, steps
        assert "done" in steps, steps
        return steps

    def close(self) -> None:
        """Stop the process if a failed test left it running."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(POLL_TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def demos(node: str) -> Iterator[list[Demo]]:
    """The demos a test starts, stopped after it if still running."""
    started: list[Demo] = []
    yield started
    for demo in started:
        demo.close()


def debits(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM credit_usage_log WHERE type = 'debit'").fetchone()
    assert row is not None
    return int(row[0])


def check_the_rest(conn: Conn, demo: Demo, team_admin: str, member: str,
                   keyed: dict[str, Any]) -> None:
    """After the keyed debit: its replay, the pool debit, the balance and the two errors."""
    key, log_id = keyed["idempotencyKey"], keyed["result"]["log_id"]
    steps = demo.finish()
    replay = steps["replay"]["result"]
    assert (replay["replayed"], replay["log_id"], replay["remaining_credits"]) == (
        True, log_id, 250)
    pool = steps["pool_debit"]["result"]
    assert pool["from_team_pool"] is True
    assert (pool["account_user_id"], pool["actor_user_id"]) == (team_admin, member)
    assert (pool["amount"], pool["remaining_credits"], pool["replayed"]) == (1000, 4000, False)
    assert steps["balance"]["result"]["spendable"] == 4000
    assert steps["balance"]["result"]["team_pool_remaining"] == 4000

    # The same calls through the Python package, mapped by the Python router: the
    # same status and the same body, the database's message and detail included.
    with pytest.raises(credits_db.InsufficientCredits) as insufficient:
        credits_db.debit(conn, member, 1_000_000, source="search")
    with pytest.raises(credits_db.IdempotencyConflict) as conflict:
        credits_db.debit(conn, member, 5, source="search", idempotency_key=key)
    for what, raised, status in (("insufficient", insufficient.value, 402),
                                 ("key_reused", conflict.value, 409)):
        http = steps[what]["http"]
        assert http["status"] == status
        assert (http["status"], http["body"]) == error_content(raised)

    assert (balance(conn, member), balance(conn, team_admin)) == (
        (350, 100, 250), (5000, 1000, 4000))
    assert debits(conn) == 2
    assert integrity(conn) == []


def key_log_id(conn: Conn, member: str, key: str) -> int:
    """The log entry the member's key names."""
    row = conn.execute("SELECT log_id FROM credit_idempotency_keys WHERE owner_user_id = %s"
                       " AND operation = 'debit' AND idempotency_key = %s",
                       (member, key)).fetchone()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------- the demo


def test_demo_debits_replays_spends_the_pool_and_maps_errors(node: str, db: Database,
                                                             conn: Conn,
                                                             demos: list[Demo]) -> None:
    demo = Demo(node, db.url)
    demos.append(demo)
    users = demo.next("users")
    keyed = demo.next("debit")
    first = keyed["result"]
    assert (first["replayed"], first["from_team_pool"], first["remaining_credits"]) == (
        False, False, 250)
    assert first["account_user_id"] == users["member"] and first["actor_user_id"] is None
    assert first["log_id"] == key_log_id(conn, users["member"], keyed["idempotencyKey"])
    check_the_rest(conn, demo, users["teamAdmin"], users["member"], keyed)


# --------------------------------------------------------------------------- retries


def test_answer_lost_after_commit_the_retry_replays(node: str, db: Database, conn: Conn,
                                                    demos: list[Demo]) -> None:
    proxy = CuttableProxy(db.url)
    try:
        demo = Demo(node, proxy.url, "--pause")
        demos.append(demo)
        users = demo.next("users")
        assert demo.next("paused")["before"] == "debit"
        proxy.cut.set()  # the next answer from the server is lost on the way
        demo.go()
        lost = demo.next("retry")
        assert (lost["attempt"], lost["type"], lost["code"]) == (1, "ConnectionLost", "08006")
        assert "may have committed" in lost["message"]
        # The server answers only after the commit, and the proxy cut the connection
        # on that answer: the debit is in, the client never heard.
        assert balance(conn, users["member"]) == (350, 100, 250) and debits(conn) == 1
        assert demo.next("paused")["before"] == "retry"
        demo.go()
        keyed = demo.next("debit")
        retried = keyed["result"]
        log_id = key_log_id(conn, users["member"], keyed["idempotencyKey"])
        assert (retried["replayed"], retried["log_id"], retried["remaining_credits"]) == (
            True, log_id, 250)
        check_the_rest(conn, demo, users["teamAdmin"], users["member"], keyed)
    finally:
        proxy.close()


@pytest.mark.parametrize(("fault", "code", "error_type"), [
    ("backend killed", "57P01", "ConnectionLost"),
    ("lock timeout", "55P03", "RetryableError"),
])
def test_debit_failed_while_waiting_on_a_lock_the_retry_spends_once(
        node: str, db: Database, conn: Conn, demos: list[Demo], fault: str, code: str,
        error_type: str) -> None:
    url = db.url
    if fault == "lock timeout":
        url += ("&" if "?" in url else "?") + "options=-c%20lock_timeout%3D100ms"
    demo = Demo(node, url, "--pause")
    demos.append(demo)
    users = demo.next("users")
    assert demo.next("paused")["before"] == "debit"
    with psycopg.connect(db.url) as holder:  # holds the member's row lock until rollback
        holder.execute("SELECT 1 FROM user_credits WHERE user_id = %s FOR UPDATE",
                       (users["member"],))
        demo.go()
        if fault == "backend killed":
            pid = wait_for(conn, "SELECT pid FROM pg_stat_activity"
                                 " WHERE datname = current_database() AND application_name = %s"
                                 " AND state = 'active' AND wait_event_type = 'Lock'",
                           (APPLICATION_NAME,), "the debit to wait on the row lock")[0]
            terminate(conn, pid)
        failed = demo.next("retry")
        assert (failed["attempt"], failed["type"], failed["code"]) == (1, error_type, code)
        holder.rollback()
    assert balance(conn, users["member"]) == (350, 0, 350) and debits(conn) == 0
    assert demo.next("paused")["before"] == "retry"
    demo.go()
    keyed = demo.next("debit")
    retried = keyed["result"]
    log_id = key_log_id(conn, users["member"], keyed["idempotencyKey"])
    assert (retried["replayed"], retried["log_id"], retried["remaining_credits"]) == (
        False, log_id, 250)
    check_the_rest(conn, demo, users["teamAdmin"], users["member"], keyed)


# --------------------------------------------------------------------------- the mapping

# Builds pg's own error objects (a DatabaseError with a SQLSTATE, or a socket error)
# and prints what credits.js makes of them.
NODE_MAPPING = """
import pg from 'pg';
import { CreditsError, errorTable, mayRetry, toHttp } from './credits.js';

const cases = JSON.parse(process.argv[1]);
const make = ({ sqlstate, message }) => sqlstate
  ? Object.assign(new pg.DatabaseError(message, 0, 'error'), { code: sqlstate })
  : new Error(message);
const retry = (type, key) => mayRetry(new CreditsError(type, 'XXXXX', 'm'), key);
console.log(JSON.stringify({
  table: errorTable(),
  answers: cases.map((c) => toHttp(make(c))),
  retry: {
    keyed: Object.fromEntries(['ConnectionLost', 'RetryableError', 'PoolTimeout',
      'InsufficientCredits', 'IdempotencyConflict'].map((t) => [t, retry(t, 'k')])),
    unkeyed: Object.fromEntries(['ConnectionLost', 'RetryableError'].map((t) => [t, retry(t, null)])),
  },
}));
"""


def node_mapping(node: str, cases: list[dict[str, str | None]]) -> dict[str, Any]:
    done = subprocess.run([node, "--input-type=module", "-e", NODE_MAPPING, json.dumps(cases)],
                          cwd=NODE_DIR, capture_output=True, text=True, check=True,
                          timeout=POLL_TIMEOUT)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_node_sqlstate_table_is_the_python_routers(node: str) -> None:
    expected: dict[str, list[Any]] = {}
    for sqlstate, cls in errors.SQLSTATES.items():
        status, body = error_content(cls("boom", sqlstate=sqlstate))
        assert body["error"]["code"] == sqlstate
        expected[sqlstate] = [status, body["error"]["type"]]
    assert node_mapping(node, [])["table"] == expected


@pytest.mark.parametrize(("case", "python_error"), [
    pytest.param({"sqlstate": "08001", "message": "could not connect"},
                 psycopg.errors.lookup("08001")("could not connect"), id="class 08"),
    pytest.param({"sqlstate": "23505", "message": "duplicate key"},
                 psycopg.errors.lookup("23505")("duplicate key"), id="unmapped"),
    pytest.param({"sqlstate": "40001", "message": "could not serialize access"},
                 psycopg.errors.lookup("40001")("could not serialize access"), id="retryable"),
    pytest.param({"sqlstate": None, "message": "Connection terminated unexpectedly"},
                 psycopg.OperationalError("server closed the connection unexpectedly"),
                 id="socket closed"),
    pytest.param({"sqlstate": None, "message": "timeout exceeded when trying to connect"},
                 PoolTimeout("couldn't get a connection after 30.00 sec"), id="pool timeout"),
])
def test_node_maps_errors_beyond_the_table_as_the_router_does(
        node: str, case: dict[str, str | None], python_error: Exception) -> None:
    [answer] = node_mapping(node, [case])["answers"]
    status, body = error_content(python_error)
    retry_after = {"Retry-After": "1"} if status == 503 else {}
    assert (answer["status"], answer["body"]["error"]["code"], answer["body"]["error"]["type"],
            answer["headers"]) == (status, body["error"]["code"], body["error"]["type"],
                                   retry_after)


def test_node_retries_a_lost_connection_only_with_a_key(node: str) -> None:
    retry = node_mapping(node, [])["retry"]
    assert retry["keyed"] == {"ConnectionLost": True, "RetryableError": True,
                              "PoolTimeout": True, "InsufficientCredits": False,
                              "IdempotencyConflict": False}
    # Without a key a retry after a lost connection could spend twice.
    assert retry["unkeyed"] == {"ConnectionLost": False, "RetryableError": True}
