"""Server-rendered HTML of the credits admin pages (no JavaScript, no build step).

Every value is escaped. The pages use landmarks and headings, labelled controls,
tables with captions and column headers, ``aria-live`` status regions, and SVG
charts (:mod:`~credits_db.http.charts`) each beside the table of its numbers, so
they work with a keyboard and a screen reader. No inline style or script: the
stylesheet is :data:`STYLESHEET`, served by the admin router, so the pages'
``Content-Security-Policy`` can be ``default-src 'self'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from html import escape
from urllib.parse import urlencode
from uuid import UUID

from credits_db.http import charts
from credits_db.http._admin_queries import (
    DailyLedger,
    ExpiringLots,
    LedgerBackfills,
    PoolFill,
    Renewals,
    UserRecord,
)
from credits_db.http.backfill_jobs import BackfillJob
from credits_db.models import AllocationReport, BackfillSummary, IntegrityProblem, LedgerEntry
from credits_db.models import Overview as UserOverview

STYLESHEET = """
body { font-family: system-ui, sans-serif; margin: 0; color: #1b1b1b; background: #fafafa; }
main { max-width: 72rem; margin: 0 auto; padding: 1.5rem; }
header { display: flex; justify-content: space-between; align-items: center; gap: 1rem; }
table { border-collapse: collapse; width: 100%; margin: 0.5rem 0 1.5rem; background: #fff; }
caption { text-align: left; font-weight: 600; padding: 0.25rem 0; }
th, td { border: 1px solid #c8c8c8; padding: 0.4rem 0.6rem; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.stat { font-size: 2rem; font-weight: 700; margin: 0.25rem 0 1rem; }
button, .button { font: inherit; padding: 0.5rem 1rem; border-radius: 0.3rem; cursor: pointer;
  border: 2px solid #1d4ed8; background: #1d4ed8; color: #fff; text-decoration: none;
  display: inline-block; }
.secondary { background: #fff; color: #1d4ed8; }
button:focus-visible, a:focus-visible, input:focus-visible { outline: 3px solid #f59e0b;
  outline-offset: 2px; }
.status { border-left: 4px solid #15803d; background: #ecfdf3; padding: 0.75rem 1rem;
  margin: 1rem 0; }
.status:empty { display: none; }
.error { border-left-color: #b91c1c; background: #fef2f2; }
.note { border-left-color: #1d4ed8; background: #eff6ff; }
label { display: block; font-weight: 600; margin-bottom: 0.25rem; }
input[type=password], input[type=search] { font: inherit; padding: 0.4rem; width: 100%;
  max-width: 30rem; }
.actions { display: flex; gap: 0.75rem; align-items: center; margin-top: 1rem; }
.pair { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 1.5rem;
  align-items: start; }
.pair svg { background: #fff; border: 1px solid #c8c8c8; }
.pair > div { overflow-x: auto; }
.scroll { max-height: 24rem; overflow-y: auto; }
progress { width: 100%; max-width: 30rem; height: 1.25rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.25rem 1rem; }
dt { font-weight: 600; }
dd { margin: 0; }
@media (max-width: 48rem) { .pair { grid-template-columns: 1fr; } }
"""
"""The admin pages' stylesheet (served as ``/admin/static/admin.css``)."""

CHART_DAYS = 30
EXPIRY_DAYS = 30
"""The admin page shows the credits expiring within this many days."""
RENEWAL_DAYS = 7
"""The admin page shows the renewals coming within this many days."""
SOONEST_SHOWN = 10
"""Lots expiring soonest, and renewals coming first, listed by the admin page."""


@dataclass(frozen=True)
class Links:
    """The URLs the pages link and post to (resolved from the mounted routes)."""

    page: str
    backfill: str
    logout: str
    login: str
    lookup: str
    stylesheet: str


@dataclass(frozen=True)
class JobLink:
    """A backfill job and the URL of its page."""

    job: BackfillJob
    url: str


@dataclass(frozen=True)
class Overview:
    """Everything the admin page shows."""

    report: AllocationReport
    daily: DailyLedger
    pools: list[PoolFill]
    problems: list[IntegrityProblem]
    backfills: LedgerBackfills
    expiring: ExpiringLots
    renewals: Renewals
    running: JobLink | None
    last_job: JobLink | None


def _layout(links: Links, title: str, body: str, *, refresh: int | None = None) -> str:
    meta = f"<meta http-equiv=\"refresh\" content=\"{refresh}\">" if refresh else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"{meta}<title>{escape(title)}</title>"
        f"<link rel=\"stylesheet\" href=\"{escape(links.stylesheet)}\"></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _csrf_field(csrf: str) -> str:
    return f"<input type=\"hidden\" name=\"csrf\" value=\"{escape(csrf)}\">"


def _header(links: Links, title: str, csrf: str) -> str:
    return (
        f"<header><h1>{escape(title)}</h1>"
        f"<form method=\"post\" action=\"{escape(links.logout)}\">{_csrf_field(csrf)}"
        "<button type=\"submit\" class=\"secondary\">Sign out</button></form></header>"
    )


def _num(value: int) -> str:
    return f"{value:,}"


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _table(caption: str, head: Sequence[str], rows: Sequence[Sequence[str]], *,
           empty: str, table_id: str = "", text_columns: Sequence[int] = ()) -> str:
    """A table; the first cell of each row is its header, the others are numbers but
    those of ``text_columns``. Every cell is escaped."""
    return _html_table(caption, head, [[escape(cell) for cell in row] for row in rows],
                       empty=empty, table_id=table_id, text_columns=text_columns)


def _html_table(caption: str, head: Sequence[str], rows: Sequence[Sequence[str]], *,
                empty: str, table_id: str = "", text_columns: Sequence[int] = ()) -> str:
    """:func:`_table` of cells that are HTML already (escaped by the caller)."""
    ident = f" id=\"{table_id}\"" if table_id else ""

    def numeric(i: int) -> str:
        return " class=\"num\"" if i and i not in text_columns else ""

    cols = "".join(f"<th scope=\"col\"{numeric(i)}>{escape(h)}</th>"
                   for i, h in enumerate(head))
    body = "".join(
        f"<tr><th scope=\"row\">{row[0]}</th>"
        + "".join(f"<td{numeric(i)}>{cell}</td>" for i, cell in enumerate(row[1:], 1))
        + "</tr>"
        for row in rows
    ) or f"<tr><td colspan=\"{len(head)}\">{escape(empty)}</td></tr>"
    return (f"<table{ident}><caption>{escape(caption)}</caption><thead><tr>{cols}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _section(ident: str, heading: str, body: str) -> str:
    return (f"<section aria-labelledby=\"{ident}-heading\">"
            f"<h2 id=\"{ident}-heading\">{escape(heading)}</h2>{body}</section>")


def _waiting(report: AllocationReport) -> str:
    return _section(
        "waiting", "Users without credits",
        f"<p class=\"stat\" id=\"users-without-credits\">{_num(report.users_without_credits)}</p>"
        f"<p>{_num(report.users_with_credits)} of {_num(report.users_total)} users have "
        "credits.</p>"
        + (f"<p class=\"status error\" id=\"allocation-failures\">"
           f"{_num(report.allocation_failures)} of them wait because their signup allocation "
           "failed: look each up below for the SQLSTATE and message, fix the cause, then run "
           "the backfill (credits-db verify lists them all).</p>"
           if report.allocation_failures else ""))


def _roles(report: AllocationReport) -> str:
    roles = list(report.by_role)
    chart = charts.bar_chart(
        "chart-roles", "Credits by role",
        "Total and remaining credits of the users of each role; the table beside it has "
        "the numbers.", roles,
        [charts.Series("Total credits", [r.total_credits for r in report.by_role.values()]),
         charts.Series("Remaining credits",
                       [r.remaining_credits for r in report.by_role.values()])],
        unit="credits")
    rows = [(role, _num(r.users), _num(r.users_with_credits), _num(r.total_credits),
             _num(r.remaining_credits)) for role, r in report.by_role.items()]
    table = _table("Users and credits per role",
                   ("Role", "Users", "With credits", "Total credits", "Remaining credits"),
                   rows, empty="No users yet.")
    return _section("roles", "Credits by role", f"<div class=\"pair\">{chart}<div>{table}</div>"
                                                "</div>")


def daily_series(daily: DailyLedger, days: int = CHART_DAYS) -> tuple[list[date],
                                                                     list[charts.Series]]:
    """The window's days (oldest first) and one series per source and direction."""
    window = [daily.today - timedelta(days=days - 1 - i) for i in range(days)]
    index = {day: i for i, day in enumerate(window)}
    sums: dict[tuple[str, str], list[int]] = {}
    for row in daily.rows:
        if row.day in index:
            key = (row.type, row.source)
            sums.setdefault(key, [0] * days)[index[row.day]] += row.credits
    series = [charts.Series(f"{source} ({'allocated' if kind == 'credit' else 'spent'})", values)
              for (kind, source), values in sorted(sums.items())]
    return window, series


def _daily(daily: DailyLedger) -> str:
    window, series = daily_series(daily)
    chart = charts.daily_chart(
        "chart-daily", f"Allocations and spending per day, last {CHART_DAYS} days",
        "Credits allocated (above the line) and spent (below it) per UTC day, stacked by "
        "source; the table beside it has the numbers.", window, series)
    rows = [[day.isoformat()] + [_num(s.values[i]) for s in series]
            for i, day in enumerate(window) if any(s.values[i] for s in series)]
    table = _table("Credits per day and source (days without entries left out)",
                   ["Day (UTC)"] + [s.name for s in series], rows,
                   empty="No allocations or spending in these days.", table_id="daily-table")
    return _section("daily", f"Allocations and spending, last {CHART_DAYS} days",
                    f"<div class=\"pair\">{chart}<div class=\"scroll\">{table}</div></div>")


def _pool_name(pool: PoolFill) -> str:
    return pool.email or str(pool.team_admin_id)


def _pools(pools: list[PoolFill]) -> str:
    names = [_pool_name(p) for p in pools]
    chart = charts.bar_chart(
        "chart-pools", "Fullest team pools",
        "Members and seats of the team pools with the most members; the table beside it "
        "has the numbers and the credits left.", names,
        [charts.Series("Members", [p.members for p in pools]),
         charts.Series("Seats", [p.member_limit for p in pools])])
    rows = [(name, _num(p.members), _num(p.member_limit), _num(p.remaining_credits))
            for name, p in zip(names, pools, strict=True)]
    table = _table("Team pools with the most members",
                   ("Team admin", "Members", "Seats", "Credits left"), rows,
                   empty="No team pools yet.")
    return _section("pools", "Fullest team pools",
                    f"<div class=\"pair\">{chart}<div>{table}</div></div>")


def _integrity(problems: list[IntegrityProblem]) -> str:
    if not problems:
        return _section("integrity", "Integrity",
                        "<p id=\"integrity\">OK: every balance equals the sum of its ledger "
                        "rows (<code>verify_credit_integrity()</code> found nothing).</p>")
    items = "".join(f"<li>{escape(str(p.user_id) if p.user_id else 'ledger')}: "
                    f"{escape(p.problem)}</li>" for p in problems[:20])
    more = f"<p>and {_num(len(problems) - 20)} more.</p>" if len(problems) > 20 else ""
    return _section("integrity", "Integrity",
                    f"<div role=\"alert\" class=\"status error\" id=\"integrity\">"
                    f"{_num(len(problems))} problems found by "
                    f"<code>verify_credit_integrity()</code>:<ul>{items}</ul>{more}</div>")


def _account(links: Links, user_id: UUID, email: str | None) -> str:
    """An account's email (else its id), linked to its lookup; escaped HTML."""
    href = f"{links.lookup}?{urlencode({'who': str(user_id)})}"
    return f"<a href=\"{escape(href)}\">{escape(email or str(user_id))}</a>"


def _expiring(links: Links, lots: ExpiringLots) -> str:
    lapsed, coming = lots.lapsed, lots.coming
    if lapsed.lots:
        sweep = (f"<div role=\"alert\" class=\"status error\" id=\"lapsed-lots\">"
                 f"{_num(lapsed.credits)} credits in {_num(lapsed.lots)} lots of "
                 f"{_num(lapsed.accounts)} accounts lapsed (the first "
                 f"{escape(_when(lapsed.oldest))}) and were not swept: "
                 "<code>expire_credits()</code> has not run since. Debits do not spend them, "
                 "but the balances count them until it runs: schedule it (see "
                 "docs/admin.md).</div>")
    else:
        sweep = "<p id=\"lapsed-lots\">No lapsed credits wait for the sweep.</p>"
    days = [(d.day.isoformat(), _num(d.lots), _num(d.accounts), _num(d.credits))
            for d in lots.by_day]
    per_day = _table(f"Credits expiring per UTC day, next {lots.days} days (days without "
                     "expiries left out)", ("Day (UTC)", "Lots", "Accounts", "Credits"), days,
                     empty=f"No credits expire in the next {lots.days} days.",
                     table_id="expiry-days")
    soonest = [[escape(_when(lot.expires_at)), _account(links, lot.user_id, lot.email),
                escape(lot.role if lot.role is not None else "(none)"), escape(lot.source),
                _num(lot.amount), _num(lot.remaining)] for lot in lots.soonest]
    first = _html_table(f"The {SOONEST_SHOWN} lots expiring first",
                        ("Expires", "Account", "Role", "Source", "Amount", "Unspent"), soonest,
                        empty="No lot expires in this window.", table_id="expiring-lots",
                        text_columns=(1, 2, 3))
    return _section(
        "expiring", f"Credits expiring, next {lots.days} days",
        f"<p class=\"stat\" id=\"expiring-credits\">{_num(coming.credits)}</p>"
        f"<p id=\"expiring-summary\">credits in {_num(coming.lots)} lots of "
        f"{_num(coming.accounts)} accounts expire in the next {lots.days} days, unless "
        f"spent first.</p>{sweep}<div class=\"pair\"><div class=\"scroll\">{first}</div>"
        f"<div class=\"scroll\">{per_day}</div></div>")


def _interval(value: str | None) -> str:
    return "once (no renewal)" if value is None else value


def _renewals(links: Links, renewals: Renewals) -> str:
    r = renewals
    if r.due_accounts:
        due = (f"<div role=\"alert\" class=\"status error\" id=\"renewals-due\">"
               f"The allowance periods of {_num(r.due_accounts)} accounts ended (the first "
               f"{escape(_when(r.oldest_due))}) and were not renewed: "
               "<code>renew_allowances()</code> has not run since. Until it runs they have "
               f"no allowance for their current period ({_num(r.due_credits)} credits to "
               "give, rollovers aside): schedule it (see docs/admin.md).</div>")
    elif any(role.renewal_interval is not None for role in r.roles):
        due = "<p id=\"renewals-due\">No renewal is due.</p>"
    else:
        due = ("<p id=\"renewals-due\">No role renews: every allocation is given once "
               "(set <code>role_credits.renewal_interval</code> to renew one).</p>")
    stopped = (f"<p class=\"status note\" id=\"renewals-stopped\">"
               f"The periods of {_num(r.stopped_accounts)} accounts ended but their role no "
               "longer renews: the renewal leaves them as they are.</p>"
               if r.stopped_accounts else "")
    upcoming = [[escape(_when(n.period_ends_at)), _account(links, n.user_id, n.email),
                 escape((n.role if n.role is not None else "(none)")
                        + ("" if n.role == n.renews_as else f" (as {n.renews_as})")),
                 _num(n.credits)] for n in r.next]
    first = _html_table(f"The {SOONEST_SHOWN} renewals coming first",
                        ("Period ends", "Account", "Role", "Allowance"), upcoming,
                        empty=f"No renewal in the next {r.days} days.",
                        table_id="renewals-next", text_columns=(1, 2))
    roles = [(role.role, _num(role.credits), _interval(role.renewal_interval),
              _num(role.rollover_cap)) for role in r.roles]
    per_role = _table("Allowance and renewal per role (role_credits)",
                      ("Role", "Allowance", "Renews every", "Rollover cap"), roles,
                      empty="No role_credits rows.", table_id="role-renewals",
                      text_columns=(2,))
    return _section(
        "renewals", "Renewals",
        f"<p class=\"stat\" id=\"renewals-coming\">{_num(r.coming_accounts)}</p>"
        f"<p id=\"renewals-summary\">accounts renew in the next {r.days} days: "
        f"{_num(r.coming_credits)} credits of allowance, rollovers aside.</p>{due}{stopped}"
        f"<div class=\"pair\"><div class=\"scroll\">{first}</div><div>{per_role}</div></div>")


def _last_backfill(view: Overview) -> str:
    ledger = view.backfills
    text = (f"Last backfill allocation in the ledger: {escape(_when(ledger.last_at))}. "
            f"All time: {_num(ledger.allocations)} users allocated by backfill, "
            f"{_num(ledger.credits)} credits.") if ledger.last_at else \
        "The ledger has no backfill allocation yet."
    job = ""
    if view.last_job is not None:
        last = view.last_job.job
        outcome = (_result_line(last.summary) if last.summary is not None
                   else f"failed: {escape(last.error or '')}")
        job = (f"<p id=\"last-job\">Last run from this page (this server process): "
               f"{escape(_when(last.finished_at))}, {outcome} "
               f"<a href=\"{escape(view.last_job.url)}\">Details</a></p>")
    return f"<p id=\"last-backfill\">{text}</p>{job}"


def _backfill(links: Links, view: Overview) -> str:
    if view.running is not None:
        action = (f"<p>A backfill is running: <a href=\"{escape(view.running.url)}\" "
                  "id=\"running-job\">see its progress</a>.</p>")
    else:
        action = (f"<form method=\"get\" action=\"{escape(links.backfill)}\">"
                  "<button type=\"submit\" id=\"backfill\">Backfill Credits</button></form>")
    return _section(
        "backfill", "Backfill",
        "<p>Give every user without credits their role's allocation, in batches (each one "
        "committed on its own). Users who already have credits are never changed, so running "
        f"it again is safe.</p>{action}{_last_backfill(view)}")


def _lookup_form(links: Links, who: str = "") -> str:
    return (
        f"<form method=\"get\" action=\"{escape(links.lookup)}\" role=\"search\">"
        "<label for=\"who\">User id or email</label>"
        f"<input type=\"search\" id=\"who\" name=\"who\" required value=\"{escape(who)}\">"
        "<div class=\"actions\"><button type=\"submit\">Look up</button></div></form>")


def admin_page(links: Links, csrf: str, view: Overview) -> str:
    """The admin page: waiting users, the backfill, integrity, expiring credits,
    renewals, lookup and the charts."""
    return _layout(
        links, "Credits administration",
        _header(links, "Credits administration", csrf)
        + f"<div role=\"status\" aria-live=\"polite\" class=\"status note\" id=\"result\">"
        f"{'A backfill is running.' if view.running is not None else ''}</div>"
        + _waiting(view.report) + _backfill(links, view) + _integrity(view.problems)
        + _expiring(links, view.expiring) + _renewals(links, view.renewals)
        + _section("lookup", "Look up a user", _lookup_form(links))
        + _roles(view.report) + _daily(view.daily) + _pools(view.pools),
    )


def _by_role(summary: BackfillSummary, caption: str) -> str:
    if not summary.by_role:
        return ""
    rows = [(role, _num(a.users), _num(a.credits)) for role, a in summary.by_role.items()]
    return _table(caption, ("Role", "Users", "Credits"), rows, empty="")


def _result_line(summary: BackfillSummary) -> str:
    fallback = (f" {_num(summary.fallback_role_users)} of them had no or an unknown role "
                "and got the member allocation."
                if summary.fallback_role_users else "")
    return (f"Allocated {_num(summary.credits_allocated)} credits to "
            f"{_num(summary.users_backfilled)} users.{fallback}")


def confirm_page(links: Links, csrf: str, preview: BackfillSummary,
                 running: JobLink | None) -> str:
    """The confirmation step, with what the backfill would do now (a dry run).

    Nothing has focus on arrival (Enter does nothing until the operator picks a
    button), and there is no Confirm button when nobody waits or a job runs.
    """
    back = f"<a class=\"button secondary\" href=\"{escape(links.page)}\">Back</a>"
    if running is not None:
        body = (f"<p id=\"preview\" class=\"status note\">A backfill is already running. "
                f"<a href=\"{escape(running.url)}\">See its progress</a></p>"
                f"<div class=\"actions\">{back}</div>")
    elif not preview.users_without_credits:
        body = ("<p id=\"preview\">Every user already has credits: there is nothing to "
                f"backfill.</p><div class=\"actions\">{back}</div>")
    else:
        what = (f"{_num(preview.users_without_credits)} users have no credits. The backfill "
                f"will allocate {_num(preview.credits_allocated)} credits to them.")
        body = (
            f"<p id=\"preview\">{escape(what)}</p>"
            + _by_role(preview, "Would be allocated by role")
            + f"<form method=\"post\" action=\"{escape(links.backfill)}\">{_csrf_field(csrf)}"
            "<div class=\"actions\">"
            "<button type=\"submit\" id=\"confirm\">Confirm backfill</button>"
            f"<a class=\"button secondary\" href=\"{escape(links.page)}\">Cancel</a>"
            "</div></form>")
    return _layout(links, "Confirm backfill",
                   _header(links, "Backfill credits: are you sure?", csrf) + body)


JOB_REFRESH_SECONDS = 1


def job_page(links: Links, csrf: str, job: BackfillJob) -> str:
    """A backfill job: progress while it runs (the page reloads itself), then its summary."""
    back = f"<p><a href=\"{escape(links.page)}\">Back to the admin page</a></p>"
    started = f"<p>Started {escape(_when(job.started_at))}.</p>"
    if job.state == "running":
        waiting = job.waiting
        of = f" of {_num(waiting)}" if waiting is not None else ""
        bar = (f"<progress id=\"progress\" max=\"{max(waiting, 1)}\" "
               f"value=\"{min(job.users_backfilled, max(waiting, 1))}\" "
               "aria-labelledby=\"result-heading\"></progress>" if waiting is not None else "")
        status = (
            "<h2 id=\"result-heading\">Backfill running</h2>"
            f"{bar}<p id=\"backfill-progress\">{_num(job.users_backfilled)}{of} users "
            f"allocated so far; committed batches: {_num(job.calls)}.</p><p>This page "
            "refreshes itself; reloading it never starts another run.</p>")
        refresh: int | None = JOB_REFRESH_SECONDS
    elif job.summary is not None:
        status = ("<h2 id=\"result-heading\">Backfill complete</h2>"
                  f"<p id=\"backfill-summary\">{_result_line(job.summary)}</p>"
                  f"<p>{_num(job.calls)} batches committed; finished "
                  f"{escape(_when(job.finished_at))}.</p>"
                  + _by_role(job.summary, "Allocated by role"))
        refresh = None
    else:
        status = ("<h2 id=\"result-heading\">Backfill failed</h2>"
                  f"<p id=\"backfill-error\">{escape(job.error or 'unknown error')}</p>"
                  f"<p>{_num(job.users_backfilled)} users were allocated by the "
                  f"{_num(job.calls)} batches committed before it stopped; they keep their "
                  "credits. Running the backfill again allocates only the users still "
                  "waiting.</p>")
        refresh = None
    return _layout(
        links, "Backfill", _header(links, "Backfill credits", csrf)
        + f"<div role=\"status\" aria-live=\"polite\" class=\"status\" id=\"result\">{status}"
        f"</div>{started}{back}", refresh=refresh)


def _entries(entries: list[LedgerEntry]) -> str:
    rows = "".join(
        f"<tr><th scope=\"row\">{escape(_when(e.created_at))}</th>"
        f"<td class=\"num\">{_num(e.amount)}</td><td>{escape(e.source)}</td>"
        f"<td>{escape(e.description or '')}</td>"
        f"<td>{escape(str(e.actor_user_id) if e.actor_user_id else '')}</td></tr>"
        for e in entries) or "<tr><td colspan=\"5\">No ledger rows.</td></tr>"
    return ("<table id=\"entries\"><caption>Last ledger rows of this account, newest first"
            "</caption><thead><tr><th scope=\"col\">When</th><th scope=\"col\" class=\"num\">"
            "Credits</th><th scope=\"col\">Source</th><th scope=\"col\">Description</th>"
            f"<th scope=\"col\">Spent by (pool member)</th></tr></thead><tbody>{rows}</tbody>"
            "</table>")


def _facts(facts: Sequence[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts) \
        + "</dl>"


def _explanation(user: UserRecord, overview: UserOverview) -> str:
    role = user.role if user.role is not None else "(none)"
    entitlement = (f"{_num(user.role_credits)} credits (the member allocation: "
                   "the role is missing or has no role_credits row)" if user.fallback_role
                   else f"{_num(user.role_credits)} credits")
    facts = [("User id", str(user.id)), ("Email", user.email or "(none)"), ("Role", role),
             ("Role allocation", entitlement)]
    facts.append(("Status", f"{overview.status}: {overview.message or 'the account has credits'}"))
    if overview.failure is not None:
        f = overview.failure
        facts.append(("Signup allocation failed",
                      f"{_when(f.failed_at)}: {f.sqlstate} {f.message}"
                      + ("" if f.detail is None else f" ({f.detail})")))
    if user.balance is None:
        facts.append(("Balance", "no balance row: the next backfill allocates this user"))
    else:
        b = user.balance
        facts += [("Remaining credits", _num(b.remaining_credits)),
                  ("Total / used", f"{_num(b.total_credits)} / {_num(b.used_credits)}"),
                  ("Allocated by role", _num(b.allocated_credits)),
                  ("Balance opened", _when(b.created_at))]
    if user.member_of is not None:
        pool = user.member_of
        left = "" if pool.pool_remaining is None else f", {_num(pool.pool_remaining)} credits left"
        facts.append(("Spends from the pool of",
                      f"{pool.email or pool.team_admin_id}{left} (since {_when(pool.since)})"))
    if user.member_limit or user.members:
        names = ", ".join(m.email or str(m.team_member_id) for m in user.members) or "nobody yet"
        facts.append(("Own pool", f"{len(user.members)} of {user.member_limit} seats: {names}"))
    own = overview.balance.own
    facts.append(("GET /api/billing/overview answers",
                  f"accountStatus {overview.status}, remainingCredits "
                  f"{_num(own.remaining_credits if own else 0)}, spendableCredits "
                  f"{_num(overview.balance.spendable)}, {len(overview.recent_usage)} recent rows"))
    return (_section("user", "User", _facts(facts))
            + _section("ledger", "Last usage rows (as the overview shows them)",
                       _entries(overview.recent_usage)))


def lookup_page(links: Links, csrf: str, who: str, user: UserRecord | None,
                overview: UserOverview | None, message: str | None = None) -> str:
    """The user lookup: the form, then the user explained, or why nothing was found."""
    if message is not None:
        result = f"<div role=\"alert\" class=\"status error\" id=\"lookup-result\">" \
                 f"{escape(message)}</div>"
    elif user is None or overview is None:
        result = ""
    else:
        result = _explanation(user, overview)
    return _layout(
        links, "Look up a user", _header(links, "Look up a user", csrf)
        + _lookup_form(links, who) + result
        + f"<p><a href=\"{escape(links.page)}\">Back to the admin page</a></p>")


def login_page(links: Links, csrf: str, *, message: str | None = None,
               notice: str | None = None) -> str:
    """The sign-in form: the token is posted with the pre-session CSRF token ``csrf``
    and kept in an HttpOnly cookie."""
    alert = (f"<div role=\"alert\" class=\"status error\">{escape(message)}</div>"
             if message else "")
    if notice:
        alert += f"<div role=\"status\" class=\"status note\" id=\"notice\">{escape(notice)}</div>"
    return _layout(
        links, "Sign in",
        "<h1>Sign in to credits administration</h1>" + alert
        + f"<form method=\"post\" action=\"{escape(links.login)}\">{_csrf_field(csrf)}"
        "<label for=\"token\">Access token</label>"
        "<input type=\"password\" id=\"token\" name=\"token\" required autocomplete=\"off\">"
        "<div class=\"actions\"><button type=\"submit\">Sign in</button></div></form>",
    )


def error_page(links: Links, status: int, kind: str, message: str) -> str:
    """An error page naming the problem, with a way to sign in as someone else."""
    return _layout(
        links, f"Error {status}",
        f"<h1>Error {status}: {escape(kind)}</h1>"
        f"<div role=\"alert\" class=\"status error\">{escape(message)}</div>"
        f"<p><a href=\"{escape(links.page)}\">Back to the admin page</a> · "
        f"<a href=\"{escape(links.login)}\">Sign in with another token</a></p>",
    )
