"""Server-rendered HTML of the credits admin pages (no JavaScript, no build step).

Every value is escaped. The pages use landmarks and headings, labelled controls,
tables with captions and column headers, and an ``aria-live`` status region for
the backfill result, so they work with a keyboard and a screen reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from credits_db.models import AllocationReport, BackfillSummary

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #1b1b1b; background: #fafafa; }
main { max-width: 52rem; margin: 0 auto; padding: 1.5rem; }
header { display: flex; justify-content: space-between; align-items: center; }
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
label { display: block; font-weight: 600; margin-bottom: 0.25rem; }
input[type=password] { font: inherit; padding: 0.4rem; width: 100%; max-width: 30rem; }
.actions { display: flex; gap: 0.75rem; align-items: center; margin-top: 1rem; }
"""


@dataclass(frozen=True)
class Links:
    """The URLs the pages link and post to (resolved from the mounted routes)."""

    page: str
    backfill: str
    logout: str


def _layout(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _header(links: Links, title: str) -> str:
    return (
        f"<header><h1>{escape(title)}</h1>"
        f"<form method=\"post\" action=\"{escape(links.logout)}\">"
        "<button type=\"submit\" class=\"secondary\">Sign out</button></form></header>"
    )


def _num(value: int) -> str:
    return f"{value:,}"


def _report(report: AllocationReport) -> str:
    rows = "".join(
        f"<tr><th scope=\"row\">{escape(role)}</th><td class=\"num\">{_num(r.users)}</td>"
        f"<td class=\"num\">{_num(r.users_with_credits)}</td>"
        f"<td class=\"num\">{_num(r.total_credits)}</td>"
        f"<td class=\"num\">{_num(r.remaining_credits)}</td></tr>"
        for role, r in report.by_role.items()
    ) or "<tr><td colspan=\"5\">No users yet.</td></tr>"
    return (
        "<section aria-labelledby=\"waiting-heading\">"
        "<h2 id=\"waiting-heading\">Users without credits</h2>"
        f"<p class=\"stat\" id=\"users-without-credits\">{_num(report.users_without_credits)}</p>"
        f"<p>{_num(report.users_with_credits)} of {_num(report.users_total)} users have "
        "credits.</p></section>"
        "<section aria-labelledby=\"roles-heading\">"
        "<h2 id=\"roles-heading\">Credits by role</h2>"
        "<table><caption>Users and credits per role</caption><thead><tr>"
        "<th scope=\"col\">Role</th><th scope=\"col\" class=\"num\">Users</th>"
        "<th scope=\"col\" class=\"num\">With credits</th>"
        "<th scope=\"col\" class=\"num\">Total credits</th>"
        "<th scope=\"col\" class=\"num\">Remaining credits</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


def _by_role(summary: BackfillSummary, caption: str) -> str:
    if not summary.by_role:
        return ""
    rows = "".join(
        f"<tr><th scope=\"row\">{escape(role)}</th><td class=\"num\">{_num(a.users)}</td>"
        f"<td class=\"num\">{_num(a.credits)}</td></tr>"
        for role, a in summary.by_role.items()
    )
    return (
        f"<table><caption>{escape(caption)}</caption><thead><tr><th scope=\"col\">Role</th>"
        "<th scope=\"col\" class=\"num\">Users</th><th scope=\"col\" class=\"num\">Credits</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def _summary(summary: BackfillSummary) -> str:
    fallback = (f" {_num(summary.fallback_role_users)} of them had no or an unknown role "
                "and got the member allocation."
                if summary.fallback_role_users else "")
    return (
        "<h2 id=\"result-heading\">Backfill complete</h2>"
        f"<p id=\"backfill-summary\">Allocated {_num(summary.credits_allocated)} credits to "
        f"{_num(summary.users_backfilled)} users.{fallback}</p>"
        + _by_role(summary, "Allocated by role")
    )


def admin_page(links: Links, report: AllocationReport,
               summary: BackfillSummary | None = None) -> str:
    """The admin page: the report, the Backfill Credits button, and a backfill's result."""
    result = _summary(summary) if summary is not None else ""
    return _layout(
        "Credits administration",
        _header(links, "Credits administration")
        + f"<div role=\"status\" aria-live=\"polite\" class=\"status\" id=\"result\">{result}</div>"
        + _report(report)
        + "<section aria-labelledby=\"backfill-heading\">"
        "<h2 id=\"backfill-heading\">Backfill</h2>"
        "<p>Give every user without credits their role's allocation. Users who already have "
        "credits are never changed, so running it again is safe.</p>"
        f"<form method=\"get\" action=\"{escape(links.backfill)}\">"
        "<button type=\"submit\" id=\"backfill\">Backfill Credits</button></form></section>",
    )


def confirm_page(links: Links, preview: BackfillSummary, csrf: str) -> str:
    """The confirmation step, with what the backfill would do now (a dry run)."""
    if preview.users_without_credits:
        what = (f"{_num(preview.users_without_credits)} users have no credits. The backfill "
                f"will allocate {_num(preview.credits_allocated)} credits to them.")
    else:
        what = "Every user already has credits: the backfill will change nothing."
    return _layout(
        "Confirm backfill",
        _header(links, "Backfill credits: are you sure?")
        + f"<p id=\"preview\">{escape(what)}</p>"
        + _by_role(preview, "Would be allocated by role")
        + f"<form method=\"post\" action=\"{escape(links.backfill)}\">"
        f"<input type=\"hidden\" name=\"csrf\" value=\"{escape(csrf)}\">"
        "<div class=\"actions\">"
        "<button type=\"submit\" id=\"confirm\" autofocus>Confirm backfill</button>"
        f"<a class=\"button secondary\" href=\"{escape(links.page)}\">Cancel</a>"
        "</div></form>",
    )


def login_page(action: str, *, message: str | None = None) -> str:
    """The sign-in form: the bearer token is kept in an HttpOnly cookie."""
    alert = (f"<div role=\"alert\" class=\"status error\">{escape(message)}</div>"
             if message else "")
    return _layout(
        "Sign in",
        "<h1>Sign in to credits administration</h1>" + alert
        + f"<form method=\"post\" action=\"{escape(action)}\">"
        "<label for=\"token\">Access token</label>"
        "<input type=\"password\" id=\"token\" name=\"token\" required autocomplete=\"off\">"
        "<div class=\"actions\"><button type=\"submit\">Sign in</button></div></form>",
    )


def error_page(status: int, kind: str, message: str, login: str) -> str:
    """An error page naming the problem, with a way to sign in as someone else."""
    return _layout(
        f"Error {status}",
        f"<h1>Error {status}: {escape(kind)}</h1>"
        f"<div role=\"alert\" class=\"status error\">{escape(message)}</div>"
        f"<p><a href=\"{escape(login)}\">Sign in with another token</a></p>",
    )
