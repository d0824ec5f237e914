"""``credits-db history``: pages with --cursor, every page with --all."""

from __future__ import annotations

import json
import re

import credits_db
from tests.support.cli import cli
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users


def test_history_pages_with_cursor_and_all(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "super_admin")
    for n in range(4):
        credits_db.debit(conn, user, 1, source=f"s{n}")
    url = ("--url", db.url)

    first = cli("history", user, "--limit", "2", "--json", *url)
    assert first.returncode == 0, first.stderr
    assert [e["source"] for e in json.loads(first.stdout)] == ["s3", "s2"]
    hint = re.search(r"--cursor (\S+)", first.stderr)
    assert hint, first.stderr

    second = cli("history", user, "--limit", "2", "--cursor", hint.group(1), "--json", *url)
    assert [e["source"] for e in json.loads(second.stdout)] == ["s1", "s0"]
    assert "--cursor" in second.stderr  # the signup row is still to come

    every = cli("history", user, "--limit", "2", "--all", "--json", *url)
    assert every.returncode == 0, every.stderr
    assert [e["source"] for e in json.loads(every.stdout)] == ["s3", "s2", "s1", "s0", "signup"]
    assert "--cursor" not in every.stderr

    bad = cli("history", user, "--cursor", "nope", *url)
    assert bad.returncode == 1 and "InvalidArgument" in bad.stderr and "cursor" in bad.stderr
