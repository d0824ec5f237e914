"""``credits-db grant --expires-at --priority``, ``lots``, ``expire`` and what ``balance``
and ``explain`` say about expiry, as a separate process."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import credits_db
from tests.support.cli import as_json, cli
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, balance


def lapse(conn: Conn, user: str, log_id: int) -> None:
    """Make the lot of one grant lapse now (as the owner)."""
    conn.execute("UPDATE credit_lots SET expires_at = now() - interval '1 second'"
                 " WHERE user_id = %s AND log_id = %s", (user, log_id))


def test_grant_with_expiry_and_priority_then_lots(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")
    url = ("--url", db.url)
    when = (datetime.now(UTC) + timedelta(days=9)).replace(microsecond=0)
    granted = cli("grant", user, "100", "--expires-at", when.isoformat().replace("+00:00", "Z"),
                  "--priority", "7", "--source", "promo", *url)
    assert granted.returncode == 0, granted.stderr
    assert "100 credits" in granted.stdout

    lots = as_json(cli("lots", user, "--json", *url))
    assert [(lot["source"], lot["amount"], lot["remaining"], lot["priority"], lot["state"])
            for lot in lots] == [("promo", 100, 100, 7, "open"), ("signup", 350, 350, 50, "open")]
    assert datetime.fromisoformat(lots[0]["expires_at"]) == when
    assert lots[1]["expires_at"] is None

    text = cli("lots", user, *url)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"Lots of {user} (in spending order)"
    assert lines[1].split() == ["lot", "source", "amount", "remaining", "expires", "priority",
                                "state"]
    promo, signup = lines[3].split(), lines[4].split()
    assert promo[1:4] == ["promo", "100", "100"] and promo[5:] == ["7", "open"]
    assert datetime.fromisoformat(promo[4]) == when
    assert signup[1:] == ["signup", "350", "350", "never", "50", "open"]


def test_grant_refuses_a_time_without_an_offset_or_a_bad_priority(db: Database,
                                                                  conn: Conn) -> None:
    [user] = add_users(conn, "member")
    url = ("--url", db.url)
    naive = cli("grant", user, "10", "--expires-at", "2030-01-01T00:00:00", *url)
    assert naive.returncode == 2 and "no UTC offset" in naive.stderr
    garbage = cli("grant", user, "10", "--expires-at", "next tuesday", *url)
    assert garbage.returncode == 2 and "not an ISO 8601 time" in garbage.stderr
    past = cli("grant", user, "10", "--expires-at", "2000-01-01T00:00:00Z", *url)
    assert past.returncode == 1 and "InvalidArgument" in past.stderr
    assert "not a time in the future" in past.stderr
    priority = cli("grant", user, "10", "--priority", "101", *url)
    assert priority.returncode == 1 and "p_priority" in priority.stderr
    assert balance(conn, user) == (350, 0, 350)


def test_balance_and_explain_show_spendable_and_the_next_expiry(db: Database,
                                                                conn: Conn) -> None:
    [user] = add_users(conn, "member")
    url = ("--url", db.url)
    plain = cli("balance", user, *url).stdout
    assert "own: 350 remaining of 350 (0 used), 350 spendable\n" in plain
    assert "next expiry" not in plain

    soon = datetime.now(UTC) + timedelta(days=3)
    first = credits_db.grant(conn, user, 100, expires_at=soon)
    credits_db.grant(conn, user, 40, expires_at=soon + timedelta(days=60))
    shown = cli("balance", user, *url).stdout
    assert "own: 490 remaining of 490 (0 used), 490 spendable\n" in shown
    assert re.search(r"^own next expiry: 100 credits expire at \S+$", shown, re.M), shown

    explained = cli("explain", user, *url).stdout
    assert "next expiry: 100 credits expire at" in explained
    assert re.search(r"lot #\d+ \(admin_grant\): 100 of 100 expire at", explained), explained
    assert "40 of 40" not in explained  # beyond the 30 days the overview lists

    lapse(conn, user, first.log_id)
    lapsed = cli("balance", user, *url).stdout
    assert ("own: 490 remaining of 490 (0 used), 390 spendable (100 lapsed: credits-db expire "
            "sweeps them)") in lapsed
    assert "own next expiry: 40 credits expire at" in lapsed
    assert "spendable now: 390" in lapsed
    assert "lapsed, not swept yet: 100 credits" in cli("explain", user, *url).stdout


def test_balance_shows_the_team_pools_expiry(db: Database, conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    credits_db.add_team_member(conn, admin, member)
    credits_db.grant(conn, admin, 500, expires_at=datetime.now(UTC) + timedelta(days=2))
    shown = cli("balance", member, "--url", db.url).stdout
    assert f"team pool of {admin}: 5500 remaining, 5500 spendable\n" in shown
    assert "team pool next expiry: 500 credits expire at" in shown
    explained = cli("explain", member, "--url", db.url).stdout
    assert "team pool next expiry: 500 credits expire at" in explained
    data = as_json(cli("balance", member, "--json", "--url", db.url))
    assert data["team_pool_next_expiry"]["credits"] == 500
    assert data["own"]["spendable_credits"] == 350 and data["own"]["next_expiry"] is None


def _lapsed_lots(conn: Conn, count: int) -> list[str]:
    users = add_users(conn, "member", "member")
    for n in range(count):
        user = users[n % 2]
        granted = credits_db.grant(conn, user, 10,
                                   expires_at=datetime.now(UTC) + timedelta(days=1 + n))
        lapse(conn, user, granted.log_id)
    return users


def test_expire_in_batches_with_progress(db: Database, conn: Conn) -> None:
    users = _lapsed_lots(conn, 5)
    result = cli("expire", "--batch-size", "2", "--url", db.url)
    assert result.returncode == 0, result.stderr
    assert "expire: lots: 5 of 5 (100%)" in result.stderr
    assert re.match(r"expired 50 credits from 5 lot\(s\) of \d+ account\(s\), as of \S+\n$",
                    result.stdout), result.stdout
    assert [balance(conn, user) for user in users] == [(380, 30, 350), (370, 20, 350)]
    again = as_json(cli("expire", "--batch-size", "2", "--json", "--url", db.url))
    assert (again["lots_expired"], again["credits_expired"], again["accounts_skipped"]) == (
        0, 0, 0)


def test_expire_json_in_one_call_and_as_of(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")
    credits_db.grant(conn, user, 25, expires_at=datetime.now(UTC) + timedelta(days=2))
    url = ("--url", db.url)
    now = cli("expire", "--json", *url)
    assert as_json(now)["lots_expired"] == 0
    assert "expire: lots" not in now.stderr  # no progress line without --batch-size
    ahead = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    early = cli("expire", "--as-of", ahead.isoformat(), "--batch-size", "10", "--json", *url)
    summary = as_json(early)
    assert (summary["lots_expired"], summary["credits_expired"], summary["accounts"]) == (
        1, 25, 1)
    assert datetime.fromisoformat(summary["as_of"]) == ahead
    assert "expire: lots" not in early.stderr  # --json: no progress line
    assert balance(conn, user) == (375, 25, 350)
    naive = cli("expire", "--as-of", "2030-01-01", *url)
    assert naive.returncode == 2 and "no UTC offset" in naive.stderr
    bad = cli("expire", "--batch-size", "0", *url)
    assert bad.returncode == 2 and "--batch-size" in bad.stderr
