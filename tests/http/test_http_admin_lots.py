"""The admin page's expiring credits and renewals: the numbers on a database set up for
them (lots and periods backdated as the owner to make them lapse or fall due), the
lapsed-but-unswept and due-but-not-renewed warnings, escaping, and the indexes the
reads use."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from urllib.parse import urlencode

import httpx

from credits_db._execute import run as run_call
from credits_db.http import _admin_queries
from credits_db.http._queries import QUERIES
from credits_db.http.templates import EXPIRY_DAYS, RENEWAL_DAYS, SOONEST_SHOWN
from scripts.admin_screenshots import seed_history
from tests.support.admin_page import sign_in
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users
from tests.support.http_api import run, token

HOSTILE_EMAIL = "<script>alert(1)</script>@example.com"
ESCAPED_EMAIL = "&lt;script&gt;alert(1)&lt;/script&gt;@example.com"
HOSTILE_ROLE = '<i>pro</i> & "co"'
ESCAPED_ROLE = "&lt;i&gt;pro&lt;/i&gt; &amp; &quot;co&quot;"


def _when(value: datetime) -> str:
    """A time as the admin page writes it (the server's local time)."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _grant(conn: Conn, user: str, amount: int, expires_in: str) -> tuple[int, datetime]:
    """Grant ``amount`` credits expiring ``expires_in`` from now: (lot id, expiry)."""
    conn.execute("SELECT grant_credits(%s, %s, 'promo', NULL, NULL,"
                 " p_expires_at => now() + %s::interval)", (user, amount, expires_in))
    row = conn.execute("SELECT l.id, l.expires_at FROM credit_lots AS l WHERE l.user_id = %s"
                       " ORDER BY l.id DESC LIMIT 1", (user,)).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def _backdate_lot(conn: Conn, lot: int, ago: str) -> datetime:
    """Make a lot lapse ``ago`` ago without waiting (as the owner)."""
    row = conn.execute("UPDATE credit_lots SET expires_at = now() - %s::interval"
                       " WHERE id = %s RETURNING expires_at", (ago, lot)).fetchone()
    assert row is not None
    result: datetime = row[0]
    return result


def _period_ends(conn: Conn, user: str, when: str) -> datetime:
    """Move an account's period end to now() + ``when`` (negative: due), as the owner."""
    row = conn.execute("UPDATE user_credits SET period_ends_at = now() + %s::interval"
                       " WHERE user_id = %s RETURNING period_ends_at", (when, user)).fetchone()
    assert row is not None
    result: datetime = row[0]
    return result


def _debit(conn: Conn, user: str, amount: int) -> None:
    conn.execute("SELECT debit_credits(%s, %s, 'search', NULL, NULL)", (user, amount))


def _table(page: str, table_id: str) -> str:
    start = page.index(f'<table id="{table_id}">')
    return page[start:page.index("</table>", start)]


def _rows(table: str) -> list[str]:
    return re.findall(r"<tr><th scope=\"row\">.*?</tr>", table)


def _lookup(user: str) -> str:
    return f"/admin/credits/users?{urlencode({'who': user})}"


def test_expiring_credits_lapsed_lots_and_the_sweep(db: Database, conn: Conn) -> None:
    [operator, a, b, c, d, e, f, g] = add_users(
        conn, "super_admin", "member", HOSTILE_ROLE, "member", "member", "member", "member",
        "member")
    conn.execute("UPDATE users SET email = %s WHERE id = %s", (HOSTILE_EMAIL, b))
    # Swept already: a lapsed lot the sweep expired is not lapsed-unswept.
    swept, _ = _grant(conn, f, 9, "1 day")
    _backdate_lot(conn, swept, "2 days")
    conn.execute("SELECT expire_credits()")
    a_soon, a_soon_at = _grant(conn, a, 40, "2 days")
    b_soon, b_soon_at = _grant(conn, b, 25, "2 days")
    d_lot, d_at = _grant(conn, d, 30, "5 days")
    _debit(conn, d, 10)  # spent from the lot expiring first: 20 of it left
    a_later, a_later_at = _grant(conn, a, 60, "10 days")
    _grant(conn, c, 70, f"{EXPIRY_DAYS + 10} days")  # outside the window
    spent, _ = _grant(conn, g, 30, "3 days")
    _debit(conn, g, 30)  # all of it spent: nothing left to expire
    lapsed_old, _ = _grant(conn, e, 5, "1 day")
    lapsed_new, _ = _grant(conn, e, 15, "1 day")
    oldest = _backdate_lot(conn, lapsed_old, "1 day")
    _backdate_lot(conn, lapsed_new, "3 hours")

    lots = run_call(conn, _admin_queries.expiring_lots(EXPIRY_DAYS, SOONEST_SHOWN))
    assert lots.days == EXPIRY_DAYS
    assert lots.lapsed == _admin_queries.LotTotals(lots=2, credits=20, accounts=1, oldest=oldest)
    assert lots.coming == _admin_queries.LotTotals(lots=4, credits=145, accounts=3)
    # Per UTC day: (lots, credits, accounts).
    per_day: dict[date, tuple[int, int, set[str]]] = {}
    for user, credits, at in ((a, 40, a_soon_at), (b, 25, b_soon_at), (d, 20, d_at),
                              (a, 60, a_later_at)):
        n, total, users = per_day.get(at.astimezone(UTC).date(), (0, 0, set()))
        per_day[at.astimezone(UTC).date()] = (n + 1, total + credits, users | {user})
    assert [(x.day, x.lots, x.credits, x.accounts) for x in lots.by_day] == [
        (day, n, total, len(users)) for day, (n, total, users) in sorted(per_day.items())]
    assert [(x.lot_id, x.remaining, x.amount) for x in lots.soonest] == [
        (a_soon, 40, 40), (b_soon, 25, 25), (d_lot, 20, 30), (a_later, 60, 60)]
    assert spent not in [x.lot_id for x in lots.soonest]
    assert (lots.soonest[1].email, lots.soonest[1].role) == (HOSTILE_EMAIL, HOSTILE_ROLE)

    async def scenario(client: httpx.AsyncClient) -> None:
        await sign_in(client, token(operator, admin=True))
        page = (await client.get("/admin/credits")).text
        assert '<h2 id="expiring-heading">Credits expiring, next 30 days</h2>' in page
        assert '<p class="stat" id="expiring-credits">145</p>' in page
        assert "credits in 4 lots of 3 accounts expire in the next 30 days" in page
        assert ('<div role="alert" class="status error" id="lapsed-lots">20 credits in 2 '
                f"lots of 1 accounts lapsed (the first {_when(oldest)}) and were not swept: "
                "<code>expire_credits()</code> has not run since.") in page
        soonest = _rows(_table(page, "expiring-lots"))
        assert len(soonest) == 4
        assert soonest[0] == (
            f'<tr><th scope="row">{_when(a_soon_at)}</th><td><a href="{_lookup(a)}">{a}</a>'
            '</td><td>member</td><td>promo</td><td class="num">40</td><td class="num">40</td>'
            "</tr>")
        # Other people's text is escaped: an email and a role with HTML in them.
        assert (f'<td><a href="{_lookup(b)}">{ESCAPED_EMAIL}</a></td><td>{ESCAPED_ROLE}</td>'
                in soonest[1])
        assert '<td class="num">30</td><td class="num">20</td></tr>' in soonest[2]
        assert HOSTILE_EMAIL not in page and HOSTILE_ROLE not in page
        days = _rows(_table(page, "expiry-days"))
        assert days == [f'<tr><th scope="row">{day.isoformat()}</th><td class="num">{n}</td>'
                        f'<td class="num">{len(users)}</td><td class="num">{total}</td></tr>'
                        for day, (n, total, users) in sorted(per_day.items())]

        # The sweep runs: nothing lapsed is left; what is still to come is unchanged.
        conn.execute("SELECT expire_credits()")
        after = (await client.get("/admin/credits")).text
        assert '<p id="lapsed-lots">No lapsed credits wait for the sweep.</p>' in after
        assert 'id="lapsed-lots">20 credits' not in after
        assert '<p class="stat" id="expiring-credits">145</p>' in after

    run(db, scenario)


def test_nothing_expiring(db: Database, conn: Conn) -> None:
    [operator] = add_users(conn, "super_admin")

    async def scenario(client: httpx.AsyncClient) -> None:
        await sign_in(client, token(operator, admin=True))
        page = (await client.get("/admin/credits")).text
        assert '<p class="stat" id="expiring-credits">0</p>' in page
        assert "No lot expires in this window." in _table(page, "expiring-lots")
        assert "No credits expire in the next 30 days." in _table(page, "expiry-days")
        assert "No lapsed credits wait for the sweep." in page
        assert '<p id="renewals-due">No role renews: every allocation is given once' in page
        roles = _table(page, "role-renewals")
        assert ('<tr><th scope="row">member</th><td class="num">350</td>'
                '<td>once (no renewal)</td><td class="num">0</td></tr>') in roles
        assert "No renewal in the next 7 days." in _table(page, "renewals-next")

    run(db, scenario)


def test_renewals_due_coming_stopped_and_per_role(db: Database, conn: Conn) -> None:
    [operator, m1, m2, m3, m4, none, admin] = add_users(
        conn, "super_admin", "member", "member", "member", "member", None, "admin")
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month', rollover_cap = 100"
                 " WHERE role = 'member'")
    conn.execute("INSERT INTO role_credits (role, credits, renewal_interval, rollover_cap)"
                 " VALUES (%s, 500, '7 days', 20)", (HOSTILE_ROLE,))
    [pro] = add_users(conn, HOSTILE_ROLE)  # signs up renewing weekly
    conn.execute("UPDATE users SET email = %s WHERE id = %s", (HOSTILE_EMAIL, pro))
    # admin renewed, then stopped: its account keeps a period that is never renewed.
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month' WHERE role = 'admin'")
    conn.execute("UPDATE role_credits SET renewal_interval = NULL WHERE role = 'admin'")
    _period_ends(conn, admin, "-1 day")

    oldest = _period_ends(conn, m1, "-2 days")
    _period_ends(conn, m2, "-1 hour")
    m3_at = _period_ends(conn, m3, "3 days")
    pro_at = _period_ends(conn, pro, "1 day")
    none_at = _period_ends(conn, none, "5 days")
    _period_ends(conn, m4, f"{RENEWAL_DAYS + 3} days")  # outside the window

    renewals = run_call(conn, _admin_queries.renewals(RENEWAL_DAYS, SOONEST_SHOWN))
    assert (renewals.due_accounts, renewals.due_credits, renewals.oldest_due) == (2, 700, oldest)
    assert renewals.stopped_accounts == 1
    assert (renewals.coming_accounts, renewals.coming_credits) == (3, 350 + 500 + 350)
    assert [(str(n.user_id), n.role, n.renews_as, n.credits, n.period_ends_at)
            for n in renewals.next] == [(pro, HOSTILE_ROLE, HOSTILE_ROLE, 500, pro_at),
                                        (m3, "member", "member", 350, m3_at),
                                        (none, None, "member", 350, none_at)]
    roles = {r.role: (r.credits, r.renewal_interval, r.rollover_cap) for r in renewals.roles}
    assert roles["member"] == (350, "1 mon", 100)
    assert roles[HOSTILE_ROLE] == (500, "7 days", 20)
    assert roles["admin"] == (1000, None, 0)

    async def scenario(client: httpx.AsyncClient) -> None:
        await sign_in(client, token(operator, admin=True))
        page = (await client.get("/admin/credits")).text
        assert '<p class="stat" id="renewals-coming">3</p>' in page
        assert "accounts renew in the next 7 days: 1,200 credits of allowance" in page
        assert ('<div role="alert" class="status error" id="renewals-due">The allowance '
                f"periods of 2 accounts ended (the first {_when(oldest)}) and were not "
                "renewed: <code>renew_allowances()</code> has not run since. Until it runs "
                "they have no allowance for their current period (700 credits to give") in page
        assert ('<p class="status note" id="renewals-stopped">The periods of 1 accounts '
                "ended but their role no longer renews") in page
        upcoming = _rows(_table(page, "renewals-next"))
        assert upcoming == [
            f'<tr><th scope="row">{_when(pro_at)}</th><td><a href="{_lookup(pro)}">'
            f'{ESCAPED_EMAIL}</a></td><td>{ESCAPED_ROLE}</td><td class="num">500</td></tr>',
            f'<tr><th scope="row">{_when(m3_at)}</th><td><a href="{_lookup(m3)}">{m3}</a>'
            '</td><td>member</td><td class="num">350</td></tr>',
            f'<tr><th scope="row">{_when(none_at)}</th><td><a href="{_lookup(none)}">{none}'
            '</a></td><td>(none) (as member)</td><td class="num">350</td></tr>']
        per_role = _table(page, "role-renewals")
        assert ('<tr><th scope="row">member</th><td class="num">350</td><td>1 mon</td>'
                '<td class="num">100</td></tr>') in per_role
        assert (f'<tr><th scope="row">{ESCAPED_ROLE}</th><td class="num">500</td>'
                '<td>7 days</td><td class="num">20</td></tr>') in per_role
        assert ('<tr><th scope="row">admin</th><td class="num">1,000</td>'
                '<td>once (no renewal)</td><td class="num">0</td></tr>') in per_role
        assert HOSTILE_EMAIL not in page and HOSTILE_ROLE not in page

        # The renewal runs: nothing is due; the stopped account stays as it was.
        conn.execute("SELECT renew_allowances()")
        after = (await client.get("/admin/credits")).text
        assert '<p id="renewals-due">No renewal is due.</p>' in after
        assert 'id="renewals-stopped">The periods of 1 accounts' in after
        assert '<p class="stat" id="renewals-coming">3</p>' in after

    run(db, scenario)


def test_the_screenshot_data_fills_both_sections(db: Database, conn: Conn) -> None:
    # The browser test takes the docs' screenshots on this data (and is skipped without
    # Chromium): its monthly renewals spread over the month and its promotions show in
    # both sections, on a ledger that still verifies.
    seed_history(conn)
    [operator] = add_users(conn, "super_admin")
    lots = run_call(conn, _admin_queries.expiring_lots(EXPIRY_DAYS, SOONEST_SHOWN))
    renewals = run_call(conn, _admin_queries.renewals(RENEWAL_DAYS, SOONEST_SHOWN))
    assert lots.lapsed.lots == 0 and len(lots.by_day) >= 5
    assert {lot.source for lot in lots.soonest} >= {"signup", "promo"}
    assert renewals.due_accounts == 0 and renewals.coming_accounts >= 1
    assert conn.execute("SELECT count(*) FROM verify_credit_integrity()").fetchone() == (0,)

    async def scenario(client: httpx.AsyncClient) -> None:
        await sign_in(client, token(operator, admin=True))
        page = (await client.get("/admin/credits")).text
        assert f'<p class="stat" id="expiring-credits">{lots.coming.credits:,}</p>' in page
        assert f'<p class="stat" id="renewals-coming">{renewals.coming_accounts}</p>' in page
        assert 'role="alert"' not in page

    run(db, scenario)


def test_the_reads_can_use_their_indexes(conn: Conn) -> None:
    # With sequential scans priced out, a read whose WHERE did not imply a partial
    # index's predicate would scan another index of the table (or the table itself):
    # credit_lots is read on the open-expiry index only, user_credits on the
    # period-end index only.
    conn.execute("SET enable_seqscan = off")
    for name, params, table, index in (
            ("admin_expiring_lots", {"days": 30, "limit": 10}, "credit_lots",
             "credit_lots_open_expiry_idx"),
            ("admin_renewals", {"days": 7, "limit": 10}, "user_credits",
             "user_credits_period_ends_idx")):
        plan = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN (COSTS OFF) " + QUERIES[name], params))
        others = [row[0] for row in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexname <> %s",
            (table, index))]
        assert others and index in plan, plan
        assert f"Seq Scan on {table}" not in plan, plan
        assert not [other for other in others if re.search(rf"\b{other}\b", plan)], plan
