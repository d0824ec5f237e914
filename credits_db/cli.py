"""The ``credits-db`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import alembic.util
import psycopg
import sqlalchemy.exc

import credits_db
from credits_db import _calls, _renewal, demo, embedded, migrate, scheduling, urls
from credits_db._execute import run
from credits_db.errors import CreditsError, NotInstalled
from credits_db.models import (
    AllocationReport,
    BackfillSummary,
    CreditLot,
    Expiry,
    ExpirySummary,
    Renewal,
    RoleAllocation,
)


class UsageError(Exception):
    """A mistake in how the command was called (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other error."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see {self.prog} --help)")
        sys.exit(2)


# --------------------------------------------------------------------------- helpers


def _resolve_url(args: argparse.Namespace) -> str:
    url = args.url or urls.from_environment()
    if url is None:
        raise UsageError("no database URL: pass --url postgresql://... or set DATABASE_URL")
    return urls.to_libpq(url)


@contextmanager
def _connect(url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        yield conn


def out(text: str = "") -> None:
    """A line of the command's result, on stdout."""
    print(text)


def note(text: str) -> None:
    """A line about what the command is doing, on stderr."""
    print(text, file=sys.stderr, flush=True)


def _print_json(data: Any) -> None:
    out(json.dumps(data, default=str, sort_keys=True, indent=2))


def _cell(value: object) -> str:
    # Roles and descriptions are other people's text: a control character (a
    # newline, a terminal escape) is shown escaped, never sent to the terminal.
    text = str(value)
    return text if text.isprintable() else repr(text)[1:-1]


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]],
          align: str) -> str:
    """A plain-text table: the title, a header, a rule, then one line per row.

    ``align`` has one letter per column: ``l`` (text) or ``r`` (numbers).
    """
    cells = [list(header), *([_cell(value) for value in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(text.rjust(width) if how == "r" else text.ljust(width)
                         for text, width, how in zip(row, widths, align, strict=True)).rstrip()

    return "\n".join([title, line(cells[0]), line(["-" * w for w in widths]),
                      *(line(row) for row in cells[1:])])


class Progress:
    """A plain progress line on stderr: redrawn in place on a terminal, else every 10 s.

    The last state is always written by :meth:`close`.
    """

    def __init__(self, label: str, total: int, *, enabled: bool = True) -> None:
        self.label, self.total, self.done = label, total, 0
        self.enabled = enabled
        self.terminal = sys.stderr.isatty()
        self.started = self.shown = time.monotonic()
        self._width = 0

    def advance(self, count: int) -> None:
        """``count`` more done; redraw if it is time."""
        self.done += count
        if time.monotonic() - self.shown >= (0.1 if self.terminal else 10.0):
            self._show()

    def close(self) -> None:
        """Write the final state (and end the redrawn line)."""
        self._show()
        if self.enabled and self.terminal:
            sys.stderr.write("\n")

    def _show(self) -> None:
        self.shown = time.monotonic()
        if not self.enabled:
            return
        share = f" ({min(100, self.done * 100 // self.total)}%)" if self.total else ""
        text = (f"{self.label}: {self.done:,} of {self.total:,}{share}, "
                f"{self.shown - self.started:.1f} s")
        if self.terminal:
            sys.stderr.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


def aware_time(text: str) -> datetime:
    """An ISO 8601 time with a UTC offset (``2030-01-31T00:00:00Z``, ``...+02:00``): the
    argparse type of ``--expires-at`` and ``--as-of``."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2030-01-31T00:00:00Z)") from None
    if value.utcoffset() is None:
        # Read in which time zone? The server's, the shell's: refuse to guess.
        raise argparse.ArgumentTypeError(
            f"{text!r} has no UTC offset: add one (Z, +00:00, +02:00 ...)")
    return value


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.isoformat(timespec="seconds")


def _expiry(expiry: Expiry) -> str:
    return f"{expiry.credits} credits expire at {_when(expiry.expires_at)}"


def _renewal_text(renewal: Renewal) -> str:
    return (f"renews at {_when(renewal.renews_at)}: {renewal.credits} credits "
            f"(rollover up to {renewal.rollover_cap})")


def _role_table(title: str, by_role: Mapping[str, RoleAllocation]) -> str:
    return table(title, ("role", "users", "credits"),
                 ((role, a.users, a.credits) for role, a in by_role.items()), "lrr")


def _print_backfill(summary: BackfillSummary) -> None:
    verb = "would allocate" if summary.dry_run else "allocated"
    out(_role_table(f"Backfill ({'dry run' if summary.dry_run else 'done'})", summary.by_role))
    out(
        f"users: {summary.users_total} total, {summary.users_without_credits} without credits; "
        f"{verb} {summary.credits_allocated} credits to {summary.users_backfilled} users "
        f"({summary.fallback_role_users} with a NULL or unknown role got the member allocation)"
    )


def _print_report(report: AllocationReport) -> None:
    out(table("Credits by role",
              ("role", "users", "with credits", "total credits", "remaining credits"),
              ((role, row.users, row.users_with_credits, row.total_credits,
                row.remaining_credits) for role, row in report.by_role.items()), "lrrrr"))
    out(
        f"users with credits: {report.users_with_credits} of {report.users_total}; "
        f"still without credits: {report.users_without_credits}"
    )


# --------------------------------------------------------------------------- commands


def cmd_upgrade(args: argparse.Namespace) -> int:
    url = _resolve_url(args)
    _check_batch_size(args.batch_size)
    if args.batch_size is not None and not args.backfill:
        raise UsageError("--batch-size goes with --backfill")
    if args.backfill and args.revision not in ("head", migrate.head()):
        raise UsageError(f"--backfill upgrades to head ({migrate.head()}), not to {args.revision}")
    migrate.upgrade(url, args.revision)
    revision = migrate.current(url)
    note(f"credits-db is at revision {revision}")
    if revision != migrate.head():
        return 0
    with _connect(url) as conn:
        if args.backfill:
            # Right after the upgrade: the trigger already covers every new signup,
            # the batches cover the users from before (docs/install.md, zero-gap rollout).
            _show_backfill(args, _backfill_in_batches(conn, args.batch_size or 50_000,
                                                      show_progress=not args.json))
        else:
            _note_users_waiting(conn)
    return 0


def _note_users_waiting(conn: psycopg.Connection[Any]) -> None:
    """Say how many users the backfill would allocate, when there are any."""
    waiting = credits_db.backfill(conn, dry_run=True, limit=1).users_without_credits
    if waiting:
        note(f"{waiting:,} existing user(s) have no credits until the backfill: run "
             "credits-db backfill --batch-size N (or credits-db upgrade --backfill next time)")


def cmd_downgrade(args: argparse.Namespace) -> int:
    migrate.downgrade(_resolve_url(args), args.revision)
    note(f"credits-db is at revision {migrate.current(_resolve_url(args)) or 'base'}")
    return 0


def cmd_current(args: argparse.Namespace) -> int:
    revision = migrate.current(_resolve_url(args))
    if args.json:
        _print_json({"current": revision, "head": migrate.head()})
    else:
        out(revision or "not installed")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    sys.stdout.write(migrate.offline_sql(args.revision))
    return 0


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and not 1 <= batch_size <= 2**31 - 1:
        raise UsageError("--batch-size must be between 1 and 2147483647")


def _backfill_in_batches(conn: psycopg.Connection[Any], batch_size: int, *,
                         show_progress: bool) -> BackfillSummary:
    """``backfill_all`` with a progress line on stderr."""
    waiting = credits_db.backfill(conn, dry_run=True, limit=1).users_without_credits
    progress = Progress("backfill: users", waiting, enabled=show_progress)
    try:
        return credits_db.backfill_all(conn, batch_size=batch_size, on_batch=progress.advance)
    finally:
        progress.close()


def _show_backfill(args: argparse.Namespace, summary: BackfillSummary) -> None:
    if args.json:
        _print_json(asdict(summary))
    else:
        _print_backfill(summary)


def cmd_backfill(args: argparse.Namespace) -> int:
    _check_batch_size(args.batch_size)
    with _connect(_resolve_url(args)) as conn:
        if args.dry_run or args.batch_size is None:
            summary = credits_db.backfill(conn, dry_run=args.dry_run)
        else:
            summary = _backfill_in_batches(conn, args.batch_size, show_progress=not args.json)
    _show_backfill(args, summary)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with _connect(_resolve_url(args)) as conn:
        report = credits_db.allocation_report(conn)
        problems = credits_db.verify(conn)
        failures = credits_db.allocation_failures(conn, limit=VERIFY_FAILURES_SHOWN)
    todo = _verify_todo(report)
    if args.json:
        _print_json({"allocation": asdict(report), "integrity": [asdict(p) for p in problems],
                     "allocation_failures": [asdict(f) for f in failures], "todo": todo})
    else:
        _print_report(report)
        for problem in problems:
            out(f"integrity: {problem.user_id}: {_cell(problem.problem)}")
        out("integrity: ok" if not problems else f"integrity: {len(problems)} problem(s)")
        _print_failures(report, failures)
        for line in todo:
            out(f"to do: {line}")
    if problems:
        return 1
    return 3 if args.strict and todo else 0


VERIFY_FAILURES_SHOWN = 20
"""How many recorded allocation failures ``verify`` lists (the count is always complete)."""


def _verify_todo(report: AllocationReport) -> list[str]:
    """What an operator has to do, one line each (empty when nothing waits)."""
    todo = []
    if report.allocation_failures:
        todo.append(f"{report.allocation_failures} signup allocation(s) failed: fix the cause "
                    "(the SQLSTATE and message above), then run credits-db backfill")
    waiting = report.users_without_credits - report.allocation_failures
    if waiting > 0:
        todo.append(f"{waiting} user(s) wait for their credits: run credits-db backfill")
    return todo


def _print_failures(report: AllocationReport,
                    failures: list[credits_db.AllocationFailure]) -> None:
    if not failures:
        return
    out(table(f"Failed signup allocations ({report.allocation_failures})",
              ("user", "failed at", "sqlstate", "message"),
              ((f.user_id, f.failed_at.isoformat(timespec="seconds"), f.sqlstate,
                _cell(f.message)) for f in failures), "llll"))


def cmd_explain(args: argparse.Namespace) -> int:
    with _connect(_resolve_url(args)) as conn:
        explained = credits_db.explain_user(conn, args.user)
    if args.json:
        _print_json({**asdict(explained), "status": explained.status,
                     "next_step": explained.next_step,
                     "overview": {**asdict(explained.overview),
                                  "status": explained.overview.status,
                                  "message": explained.overview.message}})
        return 0
    for line in _explanation_lines(explained):
        out(line)
    return 0


def _explanation_lines(e: credits_db.UserExplanation) -> list[str]:
    """``credits-db explain``: one user, as an operator walks the troubleshooting steps."""
    balance = e.overview.balance
    role = "NULL" if e.role is None else repr(e.role)
    fallback = " (not in role_credits: the member allocation)" if e.role_is_fallback else ""
    lines = [f"user: {e.user_id}" + ("" if e.email is None else f" <{e.email}>"),
             f"role: {role}{fallback}; entitlement {e.entitlement} credits",
             f"status: {e.status}; next step: {e.next_step}"]
    if balance.own is None:
        lines.append("balance row: none")
    else:
        lines.append(f"balance row: total {balance.own.total_credits}, used "
                     f"{balance.own.used_credits}, remaining {balance.own.remaining_credits}, "
                     f"largest allocation given {e.allocated_credits}")
    if balance.team_admin_id is not None:
        lines.append(f"team pool: member of {balance.team_admin_id}'s pool, "
                     f"{balance.team_pool_remaining} remaining"
                     + _lapsed(balance.team_pool_remaining, balance.team_pool_spendable))
    if e.team_members:
        lines.append(f"team members: {', '.join(map(str, e.team_members))}")
    if e.overview.failure is not None:
        f = e.overview.failure
        lines.append(f"signup allocation failed at {f.failed_at.isoformat(timespec='seconds')}: "
                     f"{f.sqlstate} {_cell(f.message)}")
    if balance.own is not None and balance.own.spendable_credits != balance.own.remaining_credits:
        lines.append(f"lapsed, not swept yet: "
                     f"{balance.own.remaining_credits - balance.own.spendable_credits} credits "
                     "(not spendable; credits-db expire records their expiry)")
    if balance.next_expiry is not None:
        lines.append(f"next expiry: {_expiry(balance.next_expiry)}")
    if balance.team_pool_next_expiry is not None:
        lines.append(f"team pool next expiry: {_expiry(balance.team_pool_next_expiry)}")
    if balance.next_renewal is not None:
        lines.append(f"next renewal: {_renewal_text(balance.next_renewal)}")
    if balance.team_pool_next_renewal is not None:
        lines.append(f"team pool next renewal: {_renewal_text(balance.team_pool_next_renewal)}")
    for lot in e.overview.expiring_lots:
        lines.append(f"  lot #{lot.lot_id} ({_cell(lot.source)}): {lot.remaining} of "
                     f"{lot.amount} expire at {_when(lot.expires_at)}")
    lines.append(f"spendable now: {balance.spendable}")
    lines.append("overview (GET /api/billing/overview) answers: accountStatus "
                 f"{e.overview.status}, remainingCredits "
                 f"{balance.own.remaining_credits if balance.own else 0}, "
                 f"{len(e.overview.recent_usage)} recent row(s)"
                 + ("" if e.overview.message is None else f": {e.overview.message}"))
    for entry in e.overview.recent_usage:
        lines.append(f"  #{entry.id} {entry.created_at.isoformat(timespec='seconds')} "
                     f"{entry.type} {entry.amount:+d} {entry.source}"
                     + ("" if entry.description is None else f" {_cell(entry.description)}"))
    return lines


def _print_operation(args: argparse.Namespace, operation: credits_db.CreditOperation) -> None:
    if args.json:
        _print_json(asdict(operation))
        return
    pool = " from the team pool of " + str(operation.account_user_id) \
        if operation.from_team_pool else ""
    replay = " (replayed: nothing changed)" if operation.replayed else ""
    out(f"log #{operation.log_id}: {operation.amount} credits{pool}; "
        f"account remaining {operation.remaining_credits}{replay}")


def cmd_debit(args: argparse.Namespace) -> int:
    with _connect(_resolve_url(args)) as conn:
        operation = credits_db.debit(conn, args.user, args.amount, source=args.source,
                                     description=args.description,
                                     idempotency_key=args.idempotency_key)
    _print_operation(args, operation)
    return 0


def cmd_grant(args: argparse.Namespace) -> int:
    with _connect(_resolve_url(args)) as conn:
        operation = credits_db.grant(conn, args.user, args.amount, source=args.source,
                                     description=args.description,
                                     idempotency_key=args.idempotency_key,
                                     expires_at=args.expires_at, priority=args.priority)
    _print_operation(args, operation)
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    with _connect(_resolve_url(args)) as conn:
        balance = credits_db.balance(conn, args.user)
    if args.json:
        _print_json(asdict(balance))
        return 0
    own = balance.own
    out(f"user {balance.user_id}")
    out("own: none" if own is None else
        f"own: {own.remaining_credits} remaining of {own.total_credits} "
        f"({own.used_credits} used), {own.spendable_credits} spendable"
        + _lapsed(own.remaining_credits, own.spendable_credits))
    if own is not None and own.next_expiry is not None:
        out(f"own next expiry: {_expiry(own.next_expiry)}")
    if own is not None and own.next_renewal is not None:
        out(f"own next renewal: {_renewal_text(own.next_renewal)}")
    if balance.team_admin_id is not None:
        out(f"team pool of {balance.team_admin_id}: {balance.team_pool_remaining} remaining, "
            f"{balance.team_pool_spendable} spendable"
            + _lapsed(balance.team_pool_remaining, balance.team_pool_spendable))
        if balance.team_pool_next_expiry is not None:
            out(f"team pool next expiry: {_expiry(balance.team_pool_next_expiry)}")
        if balance.team_pool_next_renewal is not None:
            out(f"team pool next renewal: {_renewal_text(balance.team_pool_next_renewal)}")
    out(f"spendable now: {balance.spendable}")
    return 0


def _lapsed(remaining: int | None, spendable: int | None) -> str:
    """What lapsed and waits for the sweep, when something did."""
    if remaining is None or spendable is None or remaining == spendable:
        return ""
    return f" ({remaining - spendable} lapsed: credits-db expire sweeps them)"


def cmd_lots(args: argparse.Namespace) -> int:
    with _connect(_resolve_url(args)) as conn:
        lots = credits_db.lots(conn, args.user)
    if args.json:
        _print_json([asdict(lot) for lot in lots])
        return 0
    out(_lots_table(f"Lots of {args.user} (in spending order)", lots))
    return 0


def _lots_table(title: str, lots: Iterable[CreditLot]) -> str:
    return table(title, ("lot", "source", "amount", "remaining", "expires", "priority", "state"),
                 ((lot.lot_id, lot.source, lot.amount, lot.remaining, _when(lot.expires_at),
                   lot.priority, lot.state) for lot in lots), "rlrrlrl")


def cmd_expire(args: argparse.Namespace) -> int:
    _check_batch_size(args.batch_size)
    with _connect(_resolve_url(args)) as conn:
        if args.batch_size is None:
            summary = credits_db.expire(conn, as_of=args.as_of)
        else:
            summary = _expire_in_batches(conn, args.batch_size, args.as_of,
                                         show_progress=not args.json)
    if args.json:
        _print_json(asdict(summary))
        return 0
    out(f"expired {summary.credits_expired} credits from {summary.lots_expired} lot(s) of "
        f"{summary.accounts} account(s), as of {_when(summary.as_of)}")
    if summary.accounts_skipped:
        out(f"skipped {summary.accounts_skipped} busy account(s): run credits-db expire again")
    return 0


def _expire_in_batches(conn: psycopg.Connection[Any], batch_size: int, as_of: datetime | None,
                       *, show_progress: bool) -> ExpirySummary:
    """``expire_all`` with a progress line on stderr."""
    due = run(conn, _calls.lots_due(as_of=as_of))
    progress = Progress("expire: lots", due, enabled=show_progress)
    try:
        return credits_db.expire_all(conn, as_of=as_of, batch_size=batch_size,
                                     on_batch=progress.advance)
    finally:
        progress.close()


def cmd_team(args: argparse.Namespace) -> int:
    if args.action in ("add", "remove") and args.member is None:
        raise UsageError(f"team {args.action} needs ADMIN and MEMBER")
    with _connect(_resolve_url(args)) as conn:
        if args.action == "add":
            credits_db.add_team_member(conn, args.admin, args.member)
            result: Any = {"added": True}
        elif args.action == "remove":
            result = {"removed": credits_db.remove_team_member(conn, args.admin, args.member)}
        else:
            result = [asdict(m) for m in credits_db.list_team_members(conn, args.admin)]
    if args.json:
        _print_json(result)
    elif args.action == "list":
        for member in result:
            out(f"{member['team_member_id']}  since {member['created_at']}")
        out(f"{len(result)} member(s)")
    else:
        out(f"{args.action}: {'done' if next(iter(result.values())) else 'not a member'}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    entries: list[credits_db.LedgerEntry] = []
    with _connect(_resolve_url(args)) as conn:
        cursor = args.cursor
        while True:  # one page, or with --all every page (--limit rows at a time)
            page = credits_db.history_page(conn, args.user, limit=args.limit, cursor=cursor)
            entries += page.entries
            cursor = page.next_cursor
            if cursor is None or not args.all:
                break
    if cursor is not None:
        # On stderr, so stdout stays the table (or the JSON list).
        note(f"more rows: credits-db history {args.user} --limit {args.limit} --cursor {cursor}")
    if args.json:
        _print_json([asdict(e) for e in entries])
        return 0
    out(table(f"History of {args.user}", ("id", "when", "amount", "source", "actor", "description"),
              ((e.id, e.created_at.isoformat(timespec="seconds"), f"{e.amount:+d}", e.source,
                e.actor_user_id or "", e.description or "") for e in entries), "rlrlll"))
    return 0


def _parse_as_of(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--as-of {text!r} is not an ISO 8601 time "
                         "(e.g. 2025-03-01T00:00:00Z)") from None
    if value.tzinfo is None:
        raise UsageError(f"--as-of {text!r} has no time zone offset: add one (Z, +00:00)")
    return value


def cmd_renew(args: argparse.Namespace) -> int:
    _check_batch_size(args.batch_size)
    as_of = _parse_as_of(args.as_of)
    with _connect(_resolve_url(args)) as conn:
        try:
            due = _renewal.renewals_due(conn, as_of=as_of)
        except psycopg.errors.UndefinedColumn as exc:
            # user_credits from before revision 0011 has no period_ends_at.
            raise NotInstalled(detail=exc.diag.message_primary) from exc
        progress = Progress("renew: accounts", due, enabled=not args.json)
        try:
            summary = credits_db.renew_all(conn, as_of=as_of, on_batch=progress.advance,
                                           batch_size=args.batch_size
                                           or _renewal.DEFAULT_BATCH_SIZE)
        finally:
            progress.close()
    if args.json:
        _print_json(asdict(summary))
        return 0
    out(f"renewed {summary.accounts_renewed} account(s) as of {summary.as_of.isoformat()}: "
        f"{summary.credits_renewed} credits, {summary.credits_rolled_over} rolled over, "
        f"{summary.credits_expired} expired with their periods")
    if summary.accounts_skipped:
        out(f"{summary.accounts_skipped} busy account(s) skipped: the next run renews them")
    return 0


PG_CRON_UNAVAILABLE = 4
"""``credits-db schedule``'s exit code where pg_cron is not available."""


def cmd_schedule(args: argparse.Namespace) -> int:
    url = _resolve_url(args)
    if args.unschedule and (args.renew_cron or args.expire_cron):
        raise UsageError("--unschedule takes no --renew-cron or --expire-cron")
    try:
        if args.unschedule:
            result = scheduling.unschedule(url, database=args.database)
        else:
            result = scheduling.schedule(
                url, database=args.database,
                renew_cron=args.renew_cron or scheduling.DEFAULT_RENEW_CRON,
                expire_cron=args.expire_cron or scheduling.DEFAULT_EXPIRE_CRON)
    except scheduling.PgCronUnavailable as exc:
        _fail(f"{exc}; {scheduling.EXTERNAL_SCHEDULER_HINT}")
        return PG_CRON_UNAVAILABLE
    except scheduling.SchedulingError as exc:
        _fail(str(exc))
        return 1
    except psycopg.errors.InvalidParameterValue as exc:
        raise UsageError(f"pg_cron refused a schedule ({exc.diag.message_primary}): give "
                         "--renew-cron and --expire-cron in cron syntax, e.g. '0 * * * *'"
                         ) from exc
    if args.json:
        _print_json({"action": "unscheduled" if args.unschedule else "scheduled",
                     **asdict(result)})
        return 0
    for job in result.jobs:
        verb = "unscheduled" if args.unschedule else "scheduled"
        out(f"{verb} {job.jobname} (job {job.jobid}): {job.schedule!r} in database "
            f"{job.database}: {job.command}")
    if args.unschedule and not result.jobs:
        out(f"no credits-db jobs to unschedule in database {result.database}")
    elif not args.unschedule:
        out(f"pg_cron {result.pg_cron_version} runs them (its jobs are in database "
            f"{result.cron_database}: SELECT * FROM cron.job_run_details); remove them with "
            "credits-db schedule --unschedule")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    url = args.url or urls.from_environment()
    if url is None:
        embedded.require()  # else one line: what to install
        note("no DATABASE_URL: starting an embedded PostgreSQL server for the demo")
        with embedded.embedded_server() as server_url:
            return _demo(server_url, json_output=args.json)
    return _demo(urls.to_libpq(url), json_output=args.json)


def _demo(server_url: str, *, json_output: bool) -> int:
    """Run the demo in a database of its own, dropped afterwards."""
    summary, report, month = demo.run(server_url, say=note)
    if json_output:
        _print_json({"backfill": asdict(summary), "allocation": asdict(report),
                     "renewal": asdict(month)})
    else:
        _print_backfill(summary)
        out()
        _print_report(report)
        out()
        _print_renewal_month(month)
    return 0


def _print_renewal_month(month: demo.RenewalMonth) -> None:
    out(table(f"A month of renewals: {month.email} ({month.role} renews every "
              f"{month.renewal_interval}, rollover cap {month.rollover_cap})",
              ("amount", "type", "source", "description"),
              ((f"{e.amount:+d}", e.type, e.source, e.description or "")
               for e in month.entries), "rlll"))
    out(f"a month and a day later: {month.remaining_credits} credits until "
        f"{month.next_period_ends_at:%Y-%m-%d %H:%M} UTC (the allowance and the rollover); "
        f"renew_allowances() renewed {month.renewal['accounts_renewed']} accounts of the "
        f"role, expire_credits() swept {month.expiry['credits_expired']} lapsed credits")


def cmd_serve(args: argparse.Namespace) -> int:
    url = args.url or urls.from_environment()
    try:
        from credits_db.http import serve
    except ImportError as exc:
        extras = "api" if url is not None or _has_embedded() else "api,demo"
        raise UsageError(f"the HTTP API is not installed ({exc}): "
                         f"pip install 'credits-db[{extras}]'") from exc
    if url is None:
        embedded.require()  # else one line: what to install
    _check_port_free(args.host, args.port)
    try:
        serve(urls.to_libpq(url) if url else None, args.host, args.port)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Fail in one line, before any server starts, when ``host:port`` cannot be listened on."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {port}")
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            # As uvicorn binds: a port left in TIME_WAIT is free, one with a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"cannot listen on {host}:{port}: {reason} "
                         "(choose another with --port or --host)") from exc


def _has_embedded() -> bool:
    try:
        embedded.require()
    except embedded.EmbeddedServerUnavailable:
        return False
    return True


def checkout_root() -> Path | None:
    """The repository this package runs from (editable install, or ``python -m``), else None.

    The bench is not in the wheel: it lives beside ``credits_db/`` in the repository.
    """
    root = Path(__file__).resolve().parent.parent
    return root if (root / "bench" / "__main__.py").is_file() else None


def run_bench(argv: Sequence[str]) -> int:
    """``credits-db bench ...``: the benchmark, from a checkout (see docs/performance.md)."""
    root = checkout_root()
    if root is None:
        _fail("the benchmark runs from a checkout of the credits-db repository, not from an "
              "installed package: run python -m bench there (see docs/performance.md)")
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench.__main__ import main as bench_main

    try:
        status: int = bench_main(list(argv))
    except embedded.EmbeddedServerUnavailable as exc:
        _fail(str(exc))
        return 2
    return status


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    common = _Parser(add_help=False)
    common.add_argument("--url", help="database URL (postgresql://...); default: $DATABASE_URL")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    # Accepted before or after the command; SUPPRESS keeps the subcommand's default
    # from overwriting a --verbose given before it.
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="also print Alembic's progress lines")

    parser = _Parser(prog="credits-db", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also print Alembic's progress lines")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str
            ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_, description=help_)
        sub.set_defaults(handler=handler)
        return sub

    upgrade = add("upgrade", cmd_upgrade, "install or upgrade credits-db")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.add_argument("--backfill", action="store_true",
                         help="then backfill the existing users in batches (to head only)")
    upgrade.add_argument("--batch-size", type=int, default=None,
                         help="users per committed batch with --backfill (default: 50000)")
    add("downgrade", cmd_downgrade, "downgrade to REV ('base' removes credits-db)").add_argument(
        "revision")
    add("current", cmd_current, "print the installed revision")
    add("sql", cmd_sql, "print the upgrade as a SQL script (offline)").add_argument(
        "revision", nargs="?", default="head")
    backfill = add("backfill", cmd_backfill, "allocate credits to users who have none")
    backfill.add_argument("--dry-run", action="store_true", help="report, write nothing")
    backfill.add_argument("--batch-size", type=int, default=None,
                          help="commit every N users (default: one transaction)")
    verify = add("verify", cmd_verify, "verification report, integrity check and what to do "
                 "(exit 1 on integrity problems)")
    verify.add_argument("--strict", action="store_true",
                        help="exit 3 when something waits to be done (users without credits, "
                        "failed signup allocations): for cron and CI")
    add("explain", cmd_explain, "explain one USER's credits (by id or email): role, "
        "entitlement, balance, pool, failures, last entries").add_argument("user")
    for name, handler, default_source in (("debit", cmd_debit, "usage"),
                                          ("grant", cmd_grant, "admin_grant")):
        sub = add(name, handler, f"{name} AMOUNT credits for USER")
        sub.add_argument("user")
        sub.add_argument("amount", type=int)
        sub.add_argument("--source", default=default_source)
        sub.add_argument("--description")
        sub.add_argument("--idempotency-key")
        if name == "grant":
            sub.add_argument("--expires-at", type=aware_time, metavar="ISO8601",
                             help="the credits expire then (with a UTC offset, e.g. "
                             "2030-01-31T00:00:00Z); default: never")
            sub.add_argument("--priority", type=int, metavar="N",
                             help="0..100, lower spent first (default 50)")
    add("balance", cmd_balance, "USER's balance, team pool, spendable amount and next "
        "expiry").add_argument("user")
    add("lots", cmd_lots, "USER's credit lots in spending order: amount, remaining, expiry, "
        "priority, state").add_argument("user")
    expire = add("expire", cmd_expire, "expire what lapsed lots still hold (one expire entry "
                 "per lot)")
    expire.add_argument("--as-of", type=aware_time, metavar="ISO8601",
                        help="expire the lots lapsed by then (default: now)")
    expire.add_argument("--batch-size", type=int, default=None,
                        help="commit every N lots, with a progress line (default: one call)")
    team = add("team", cmd_team, "team pools: add|remove ADMIN MEMBER, list ADMIN")
    team.add_argument("action", choices=("add", "remove", "list"))
    team.add_argument("admin")
    team.add_argument("member", nargs="?")
    history = add("history", cmd_history, "USER's ledger, newest first")
    history.add_argument("user")
    history.add_argument("--limit", type=int, default=20, help="rows per page (default 20)")
    history.add_argument("--cursor", help="start after the page that printed this cursor")
    history.add_argument("--all", action="store_true", help="every page, to the oldest row")
    renew = add("renew", cmd_renew, "renew the allowances of the accounts whose period has "
                "ended (renew_allowances), in committed batches: for any scheduler")
    renew.add_argument("--as-of", help="judge the periods at this ISO 8601 time with an offset "
                       "(default: now)")
    renew.add_argument("--batch-size", type=int, default=None,
                       help=f"accounts per committed batch (default: "
                       f"{_renewal.DEFAULT_BATCH_SIZE})")
    schedule = add("schedule", cmd_schedule, "create or update the pg_cron jobs that run "
                   f"renew_allowances() and expire_credits() (exit {PG_CRON_UNAVAILABLE} "
                   "where pg_cron is not available)")
    schedule.add_argument("--renew-cron", help="when the renewal runs "
                          f"(default: '{scheduling.DEFAULT_RENEW_CRON}')")
    schedule.add_argument("--expire-cron", help="when the expiry sweep runs "
                          f"(default: '{scheduling.DEFAULT_EXPIRE_CRON}')")
    schedule.add_argument("--database", help="the database the jobs run in, where credits-db "
                          "is installed (default: the URL's)")
    schedule.add_argument("--unschedule", action="store_true",
                          help="remove the two jobs of that database instead")
    add("demo", cmd_demo, "run a demo (embedded PostgreSQL, from the demo extra, unless "
        "--url/DATABASE_URL)")
    commands.add_parser("bench", add_help=False,
                        help="run the benchmark, from a checkout: credits-db bench [--quick] "
                        "[--url URL]")
    serve = add("serve", cmd_serve, "run the example HTTP API and admin page "
                "(embedded PostgreSQL with demo users unless --url/DATABASE_URL)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    return parser


def _fail(message: str) -> None:
    # One plain line (no wrapping, no markup), whatever the terminal width.
    print(f"credits-db: error: {' '.join(message.split())}", file=sys.stderr)


def _configure_logging(*, verbose: bool) -> None:
    # Alembic's INFO lines ("Running upgrade 0001 -> 0002") only when asked for;
    # its warnings (a writable schema public) always.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _revision_error(exc: alembic.util.CommandError) -> str:
    """Alembic's complaint (an unknown revision, say), with the revisions there are."""
    return f"{exc} (credits-db's revisions: 0001 to {migrate.head()}, or base: not installed)"


def _not_installed(args: argparse.Namespace, exc: NotInstalled) -> str:
    """Say whether credits-db is missing here, or installed at an older revision."""
    try:
        revision = migrate.current(_resolve_url(args))
    except (UsageError, sqlalchemy.exc.SQLAlchemyError):
        revision = None
    if revision is None:
        return str(exc)
    return (f"credits-db is at revision {revision} in this database and this command needs "
            f"{migrate.head()}: run credits-db upgrade (DETAIL: {exc.detail})")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``credits-db``: one clear line and a non-zero exit on any failure."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        # The benchmark has its own options (--quick, --url, --out): hand them over.
        return run_bench(arguments[1:])
    args = build_parser().parse_args(arguments)
    _configure_logging(verbose=args.verbose and not args.json)
    try:
        code: int = args.handler(args)
        return code
    except (UsageError, urls.InvalidDatabaseUrl, embedded.EmbeddedServerUnavailable) as exc:
        _fail(str(exc))
        return 2
    except alembic.util.CommandError as exc:
        _fail(_revision_error(exc))
        return 2
    except NotInstalled as exc:
        _fail(f"{type(exc).__name__}: {_not_installed(args, exc)}")
        return 1
    except CreditsError as exc:
        _fail(f"{type(exc).__name__}: {exc}")
        return 1
    except (psycopg.Error, sqlalchemy.exc.SQLAlchemyError) as exc:
        original = getattr(exc, "orig", None) or exc
        message = str(original).strip().splitlines()[0] if str(original).strip() else repr(exc)
        _fail(f"database: {message}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
