"""Allowance renewal (``renew_allowances()``, revision 0011): the calls, the batched
walk, and the sync API (:func:`credits_db.renew`, :func:`credits_db.renew_all`).

The async API (:mod:`credits_db.aio`) runs the same calls and walk; see
:mod:`credits_db._renewal_aio`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.pq import TransactionStatus

from credits_db._calls import INT4_MAX, Call, _int4
from credits_db._execute import SyncConnection, _may_commit, run, run_committed
from credits_db._queries import QUERIES
from credits_db.errors import InvalidArgument
from credits_db.models import RenewalSummary

DEFAULT_BATCH_SIZE = 10_000
"""Accounts per committed call of :func:`renew_all` (and ``credits-db renew``)."""


def _as_of(as_of: datetime | None) -> datetime | None:
    # A naive datetime would be read in the session's TimeZone, which differs
    # between servers and poolers: refuse it rather than guess.
    if as_of is not None and (as_of.tzinfo is None or as_of.utcoffset() is None):
        raise InvalidArgument(f"as_of must be timezone-aware (e.g. UTC), not {as_of!r}",
                              field="as_of")
    return as_of


def renew_call(*, as_of: datetime | None, limit: int | None) -> Call[RenewalSummary]:
    """``renew_allowances(p_as_of, p_limit)``; ``as_of`` None is the server's now()."""
    _int4(limit, "limit", InvalidArgument)
    return Call(QUERIES["renew"], {"as_of": _as_of(as_of), "limit": limit},
                RenewalSummary.from_json)


def renewals_due_call(*, as_of: datetime | None) -> Call[int]:
    """How many accounts' periods ended by ``as_of`` (for a progress line)."""
    return Call(QUERIES["renewals_due"], {"as_of": _as_of(as_of)}, int)


class RenewalWalk:
    """A batched renewal under way: the next call to make, and the totals so far.

    ::

        walk = RenewalWalk(batch_size, as_of, on_batch)
        while (call := walk.next_batch()) is not None:
            walk.add_batch(run_committed(conn, call))
        return walk.finish()

    Every call renews at most ``batch_size`` accounts, the longest overdue first,
    and the walk stops after a call that renewed none. It does not wait for
    ``accounts_skipped`` to reach 0: an account a transaction holds is skipped
    by every call until it is released, so waiting could last for ever; the
    summary reports those the last call skipped, for the next run. The renewal
    skips busy accounts before its limit applies, so a call renews nothing only
    when no free account is due. Every call is judged at the same
    time: ``as_of``, or when None the server's now() of the first call (an
    account whose period ends during the walk waits for the next run, so the
    walk ends).
    """

    def __init__(self, batch_size: int, as_of: datetime | None = None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if not 1 <= batch_size <= INT4_MAX:
            raise InvalidArgument(f"batch_size must be between 1 and {INT4_MAX}, not {batch_size}")
        self._batch_size = batch_size
        self._as_of = _as_of(as_of)
        self._on_batch = on_batch
        self._done = False
        self._accounts = self._credits = self._rolled_over = self._expired = self._skipped = 0

    def next_batch(self) -> Call[RenewalSummary] | None:
        """The next call, or None once a call renewed nothing."""
        return None if self._done else renew_call(as_of=self._as_of, limit=self._batch_size)

    def add_batch(self, batch: RenewalSummary) -> None:
        """Count what one call did."""
        self._as_of = batch.as_of
        self._accounts += batch.accounts_renewed
        self._credits += batch.credits_renewed
        self._rolled_over += batch.credits_rolled_over
        self._expired += batch.credits_expired
        self._skipped = batch.accounts_skipped  # still busy when the last call looked
        self._done = batch.accounts_renewed == 0  # no free account is due any more
        if self._on_batch is not None:
            self._on_batch(batch.accounts_renewed)

    def finish(self) -> RenewalSummary:
        """The summary of the whole walk."""
        assert self._as_of is not None, "finish() before any batch"
        return RenewalSummary(
            accounts_renewed=self._accounts,
            credits_renewed=self._credits,
            credits_rolled_over=self._rolled_over,
            credits_expired=self._expired,
            accounts_skipped=self._skipped,
            as_of=self._as_of,
        )


def refuse_open_transaction(conn: SyncConnection | psycopg.AsyncConnection[Any]) -> None:
    """``InvalidArgument`` (nothing sent) when ``conn`` is inside a transaction, which
    :func:`renew_all` would otherwise commit with its first batch."""
    if isinstance(conn, sa.Engine) or _may_commit(conn):
        return
    if isinstance(conn, sa.Connection):
        inside = conn.in_transaction()
    else:
        inside = conn.info.transaction_status in (TransactionStatus.INTRANS,
                                                  TransactionStatus.INERROR)
    if inside:
        raise InvalidArgument(
            "renew_all commits each batch in a transaction of its own, so it needs a "
            "connection outside any transaction (autocommit, or commit or roll back first) "
            "or a SQLAlchemy Engine; to join your transaction, use renew()")


def renew(conn: SyncConnection, *, as_of: datetime | None = None, limit: int | None = None
          ) -> RenewalSummary:
    """Renew the allowances of the accounts whose allowance period has ended.

    Calls ``renew_allowances()``: each account whose role has a
    ``renewal_interval`` and whose period ended by ``as_of`` gets its current
    period's allowance (once, however many periods were missed) and the
    rollover its role allows; what the ended period's allowance still held
    expires. Idempotent per account and period: a second call renews nothing.
    An account another transaction holds is skipped (``accounts_skipped``)
    rather than waited for, so it is safe to run beside live traffic and
    beside another renewal. Needs ``credits_admin``.

    Parameters:
        conn: where to run it; the work joins the caller's transaction.
        as_of: judge the periods at this time (timezone-aware), e.g. later than
            now in a test; None: the server's ``now()``.
        limit: renew at most this many accounts, the longest overdue first
            (for batching); None for all.

    Raises:
        InvalidArgument: ``limit`` is below 1, or ``as_of`` is naive.
        PermissionDenied: the login is not a member of ``credits_admin``.
    """
    return run(conn, renew_call(as_of=as_of, limit=limit))


def renew_all(
    conn: SyncConnection,
    *,
    as_of: datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> RenewalSummary:
    """Renew every account due, ``batch_size`` accounts at a time, each batch committed.

    What ``credits-db renew`` runs. Each batch is one :func:`renew` call of
    ``limit=batch_size``, committed before the next (as in
    :func:`credits_db.backfill_all`: an autocommit connection commits each call
    by itself, one not in autocommit mode gets BEGIN ... COMMIT around each, a
    SQLAlchemy Engine or Connection a transaction each). The run stops after a
    call that renewed nothing. Every call is judged at the same time (``as_of``,
    or the server's now() at the first call). Accounts busy in another
    transaction are skipped, not waited for: ``accounts_skipped`` of the
    summary is how many the last call skipped, which the next run renews (busy
    accounts never hide the ones due behind them: the renewal skips them before
    its limit applies).
    If a batch fails, or ``on_batch`` raises, the batches before it stay
    committed; running it again carries on.

    Parameters:
        conn: a psycopg Connection or SQLAlchemy Connection outside any
            transaction, or a SQLAlchemy Engine.
        as_of: judge the periods at this time (timezone-aware); None: now().
        batch_size: accounts per batch (1 .. 2^31-1).
        on_batch: called after each call with the number of accounts it
            renewed (0 for the last), e.g. to advance a progress bar.

    Returns:
        The run as one summary: accounts and credits summed over the calls.

    Raises:
        InvalidArgument: ``conn`` is inside a transaction, ``batch_size`` is out
            of range, or ``as_of`` is naive (nothing is sent).
    """
    walk = RenewalWalk(batch_size, as_of, on_batch)
    refuse_open_transaction(conn)
    while (call := walk.next_batch()) is not None:
        walk.add_batch(run_committed(conn, call))
    return walk.finish()


def renewals_due(conn: SyncConnection, *, as_of: datetime | None = None) -> int:
    """How many accounts' allowance periods ended by ``as_of`` (None: now()): the
    total of ``credits-db renew``'s progress line. Counts from ``user_credits``
    alone, so an account whose role stopped renewing counts too (it is not renewed)."""
    return run(conn, renewals_due_call(as_of=as_of))
