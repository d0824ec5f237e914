"""``credits-db renew``: renew_allowances() in committed batches with the progress line, for
any scheduler (cron, a Kubernetes CronJob) where pg_cron is not available."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

import credits_db
from credits_db import migrate
from tests.support.cli import as_json, cli
from tests.support.databases import Database, Server
from tests.support.helpers import Conn, add_users
from tests.support.security import one

MEMBERS = 5


def renewing_members(conn: Conn, count: int = MEMBERS) -> list[str]:
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month' WHERE role = 'member'")
    return add_users(conn, *["member"] * count)


def next_period(conn: Conn) -> str:
    """now() + 1 month 1 day, as ISO 8601 with its offset (what --as-of takes)."""
    value: datetime = one(conn, "SELECT now() + interval '1 month 1 day'")
    return value.isoformat()


def renewed(conn: Conn) -> int:
    return int(one(conn, "SELECT count(DISTINCT user_id) FROM credit_usage_log"
                         " WHERE source = 'renewal'"))


def test_renew_in_batches_with_the_progress_line(db: Database, conn: Conn) -> None:
    renewing_members(conn)
    as_of = next_period(conn)
    result = cli("renew", "--as-of", as_of, "--batch-size", "2", "--url", db.url)
    assert result.returncode == 0, result.stderr
    # Not a terminal: the progress line is written when it closes, in full.
    assert "renew: accounts: 5 of 5 (100%)" in result.stderr
    assert result.stdout.startswith(
        f"renewed 5 account(s) as of {datetime.fromisoformat(as_of).isoformat()}: "
        "1750 credits, 0 rolled over, 1750 expired with their periods\n")
    assert "skipped" not in result.stdout
    assert renewed(conn) == MEMBERS
    again = cli("renew", "--as-of", as_of, "--url", db.url)
    assert again.returncode == 0 and again.stdout.startswith("renewed 0 account(s)")
    assert "renew: accounts: 0 of 0" in again.stderr
    assert credits_db.verify(conn) == []


def test_renew_json_is_the_summary_and_batches_sum_to_one_call(server: Server,
                                                               db: Database) -> None:
    with db.connect() as conn:
        renewing_members(conn, 7)
        as_of = next_period(conn)
    twin = server.create(template=db.name)  # the same accounts
    try:
        batched = cli("renew", "--as-of", as_of, "--batch-size", "3", "--json", "--url", db.url)
        single = as_json(cli("renew", "--as-of", as_of, "--json", "--url", twin.url))
    finally:
        server.drop(twin)
    summary = as_json(batched)
    assert summary == single
    assert datetime.fromisoformat(summary.pop("as_of")) == datetime.fromisoformat(as_of)
    assert summary == {"accounts_renewed": 7, "credits_renewed": 2450, "credits_rolled_over": 0,
                       "credits_expired": 2450, "accounts_skipped": 0}
    assert "renew: accounts" not in batched.stderr  # --json: no progress line


def test_renew_reports_busy_accounts_for_the_next_run(db: Database, conn: Conn) -> None:
    busy, *_ = sorted(renewing_members(conn, 3))
    as_of = next_period(conn)
    with db.connect(autocommit=False) as holder:
        holder.execute("SELECT 1 FROM user_credits WHERE user_id = %s FOR NO KEY UPDATE",
                       (busy,))
        result = cli("renew", "--as-of", as_of, "--url", db.url)
        holder.rollback()
    assert result.returncode == 0, result.stderr
    assert "renewed 2 account(s)" in result.stdout
    assert "1 busy account(s) skipped: the next run renews them" in result.stdout
    assert "renew: accounts: 2 of 3 (66%)" in result.stderr
    assert as_json(cli("renew", "--as-of", as_of, "--json", "--url", db.url))[
        "accounts_renewed"] == 1


@pytest.mark.parametrize(("arguments", "message"), [
    (["--as-of", "next tuesday"], "--as-of 'next tuesday' is not an ISO 8601 time "
                                  "(e.g. 2025-03-01T00:00:00Z)"),
    (["--as-of", "2030-01-01T00:00:00"], "--as-of '2030-01-01T00:00:00' has no time zone "
                                         "offset: add one (Z, +00:00)"),
    (["--batch-size", "0"], "--batch-size must be between 1 and 2147483647"),
])
def test_bad_arguments_are_usage_errors_and_renew_nothing(
        db: Database, conn: Conn, arguments: list[str], message: str) -> None:
    renewing_members(conn, 1)
    conn.execute("UPDATE user_credits SET period_ends_at = now() - interval '1 day'")
    result = cli("renew", *arguments, "--url", db.url)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"credits-db: error: {message}\n"
    assert renewed(conn) == 0


def test_renew_where_credits_db_is_not_installed(empty_db: Database) -> None:
    result = cli("renew", "--url", empty_db.url)
    assert result.returncode == 1
    assert result.stderr.startswith("credits-db: error: NotInstalled: credits-db is not "
                                    "installed in this database")
    assert json.loads(cli("current", "--json", "--url", empty_db.url).stdout)["current"] is None


def test_renew_where_credits_db_is_older_than_the_renewal(db: Database) -> None:
    migrate.downgrade(db.url, "0010")
    result = cli("renew", "--url", db.url)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"credits-db: error: NotInstalled: credits-db is at revision 0010 in this database and "
        f"this command needs {migrate.head()}: run credits-db upgrade")


# --------------------------------------------------------------------------- the next renewal

RENEWS = re.compile(r"renews at (\S+): (\d+) credits \(rollover up to (\d+)\)$")


def period_end(conn: Conn, user: str) -> datetime:
    """The account's current period end, to the second (as the CLI prints it)."""
    value: datetime = one(conn, "SELECT period_ends_at FROM user_credits WHERE user_id = %s",
                          (user,))
    return value.replace(microsecond=0)


def renewal_line(output: str, prefix: str) -> tuple[datetime, int, int]:
    """The (time, credits, cap) of the line ``prefix: renews at ...`` of ``output``."""
    [line] = [line for line in output.splitlines() if line.startswith(prefix + ": ")]
    found = RENEWS.search(line[len(prefix) + 2:])
    assert found, line
    return datetime.fromisoformat(found[1]), int(found[2]), int(found[3])


def test_balance_explain_and_json_show_the_next_renewal(db: Database, conn: Conn) -> None:
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month', rollover_cap = 100"
                 " WHERE role = 'member'")
    [user] = add_users(conn, "member")
    url = ("--url", db.url)
    shown = cli("balance", user, *url)
    assert shown.returncode == 0, shown.stderr
    assert renewal_line(shown.stdout, "own next renewal") == (period_end(conn, user), 350, 100)
    assert "team pool" not in shown.stdout
    explained = cli("explain", user, *url).stdout
    assert renewal_line(explained, "next renewal") == (period_end(conn, user), 350, 100)
    assert "team pool next renewal" not in explained

    data = as_json(cli("balance", user, "--json", *url))
    renewal = data["own"]["next_renewal"]
    assert (renewal["credits"], renewal["rollover_cap"]) == (350, 100)
    assert datetime.fromisoformat(renewal["renews_at"]).replace(microsecond=0) == period_end(
        conn, user)
    assert data["team_pool_next_renewal"] is None
    explained_json = as_json(cli("explain", user, "--json", *url))
    assert explained_json["overview"]["balance"]["own"]["next_renewal"] == renewal


def test_balance_and_explain_show_the_pools_renewal(db: Database, conn: Conn) -> None:
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month' WHERE role = 'team_admin'")
    admin, member = add_users(conn, "team_admin", "member")
    credits_db.add_team_member(conn, admin, member)
    url = ("--url", db.url)
    shown = cli("balance", member, *url).stdout
    assert renewal_line(shown, "team pool next renewal") == (period_end(conn, admin), 5000, 0)
    assert "own next renewal" not in shown  # the member's own role gives once
    explained = cli("explain", member, *url).stdout
    assert renewal_line(explained, "team pool next renewal") == (period_end(conn, admin), 5000,
                                                                 0)
    assert not any(line.startswith("next renewal") for line in explained.splitlines())
    data = as_json(cli("balance", member, "--json", *url))
    assert data["own"]["next_renewal"] is None
    assert (data["team_pool_next_renewal"]["credits"],
            data["team_pool_next_renewal"]["rollover_cap"]) == (5000, 0)


def test_no_renewal_line_for_a_role_that_gives_once(db: Database, conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    credits_db.add_team_member(conn, admin, member)
    for output in (cli("balance", member, "--url", db.url).stdout,
                   cli("explain", member, "--url", db.url).stdout):
        assert "renew" not in output
    data = as_json(cli("balance", member, "--json", "--url", db.url))
    assert (data["own"]["next_renewal"], data["team_pool_next_renewal"]) == (None, None)
