"""credits-db verify (what to do, --strict) and credits-db explain, as a separate process."""

from __future__ import annotations

from tests.support.cli import as_json, cli
from tests.support.databases import Database
from tests.support.helpers import (
    add_users,
    add_users_whose_allocation_fails,
    add_users_without_credits,
)


def test_verify_says_what_to_do_and_strict_exits_non_zero(db: Database) -> None:
    with db.connect() as conn:
        add_users(conn, "member")
        [failed] = add_users_whose_allocation_fails(conn, "admin")
        add_users_without_credits(conn, "member", "member")

    plain = cli("verify", "--url", db.url)
    assert plain.returncode == 0, plain.stderr
    assert "integrity: ok" in plain.stdout
    assert "to do: 1 signup allocation(s) failed" in plain.stdout
    assert "to do: 2 user(s) wait for their credits: run credits-db backfill" in plain.stdout
    assert failed in plain.stdout and "23514" in plain.stdout

    strict = cli("verify", "--strict", "--url", db.url)
    assert strict.returncode == 3
    report = as_json(cli("verify", "--json", "--url", db.url))
    assert report["allocation"]["allocation_failures"] == 1
    assert [f["user_id"] for f in report["allocation_failures"]] == [failed]
    assert len(report["todo"]) == 2

    assert cli("backfill", "--url", db.url).returncode == 0
    done = cli("verify", "--strict", "--url", db.url)
    assert done.returncode == 0, done.stdout
    assert "to do" not in done.stdout and "Failed signup" not in done.stdout


def test_explain_walks_one_user(db: Database) -> None:
    with db.connect() as conn:
        [admin] = add_users(conn, "team_admin")
        conn.execute("UPDATE users SET email = 'boss@example.com' WHERE id = %s", (admin,))
        [failed] = add_users_whose_allocation_fails(conn, "member")

    text = cli("explain", "boss@example.com", "--url", db.url)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"user: {admin} <boss@example.com>"
    assert "role: 'team_admin'; entitlement 5000 credits" in lines
    assert "status: active; next step: nothing to do" in lines
    assert any(line.startswith("balance row: total 5000, used 0, remaining 5000") for line in lines)
    assert any("accountStatus active, remainingCredits 5000, 1 recent row(s)" in line
               for line in lines)

    waiting = cli("explain", failed, "--url", db.url)
    assert "balance row: none" in waiting.stdout
    assert "status: allocation_failed" in waiting.stdout
    assert "signup allocation failed at" in waiting.stdout and "23514" in waiting.stdout
    assert "accountStatus allocation_failed, remainingCredits 0, 0 recent row(s)" in waiting.stdout

    explained = as_json(cli("explain", failed, "--json", "--url", db.url))
    assert explained["status"] == "allocation_failed"
    assert explained["overview"]["failure"]["sqlstate"] == "23514"

    unknown = cli("explain", "nobody@example.com", "--url", db.url)
    assert unknown.returncode != 0
    assert "nobody@example.com" in unknown.stderr and "Traceback" not in unknown.stderr
