"""The synchronous API: one function per SQL function, and :func:`acting_as`.

Each takes ``conn`` (a psycopg Connection, a SQLAlchemy Connection or Engine)
and joins its transaction; see :mod:`credits_db._execute`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from psycopg.pq import TransactionStatus

from credits_db import _calls
from credits_db._calls import UserId
from credits_db._execute import SyncConnection, run, run_committed
from credits_db._renewal import renew as renew
from credits_db._renewal import renew_all as renew_all
from credits_db.errors import InvalidArgument
from credits_db.models import (
    AllocationFailure,
    AllocationReport,
    BackfillBatch,
    BackfillSummary,
    Balance,
    CreditLot,
    CreditOperation,
    ExpirySummary,
    HistoryPage,
    IntegrityProblem,
    LedgerEntry,
    Overview,
    TeamMember,
    UserExplanation,
)

ConnectionT = TypeVar("ConnectionT", bound=psycopg.Connection[Any] | sa.Connection)


def backfill(
    conn: SyncConnection, *, dry_run: bool = False, limit: int | None = None
) -> BackfillSummary:
    """Allocate credits by role to every user who has none yet.

    Parameters:
        conn: where to run it; the work joins the caller's transaction.
        dry_run: report what would be allocated and write nothing.
        limit: allocate at most this many users (for batching); None for all.

    Raises:
        InvalidArgument: ``limit`` is below 1.
    """
    return run(conn, _calls.backfill(dry_run=dry_run, limit=limit))


def backfill_batch(
    conn: SyncConnection, *, after: UserId | None = None, limit: int = 50_000
) -> BackfillBatch:
    """Allocate credits to the users without any among the next ``limit`` users by id.

    Walk a large table by passing each result's ``last_user_id`` as the next
    ``after`` until it is None; each call costs the same wherever it starts.
    Finish with :func:`backfill` to catch users left behind the cursor.

    Raises:
        InvalidArgument: ``limit`` is below 1 or beyond a 32-bit integer.
    """
    return run(conn, _calls.backfill_batch(after=after, limit=limit))


def backfill_all(
    conn: SyncConnection,
    *,
    batch_size: int = 50_000,
    on_batch: Callable[[int], None] | None = None,
) -> BackfillSummary:
    """Backfill every user, ``batch_size`` users at a time, each batch committed on its own.

    What ``credits-db backfill --batch-size N`` runs. The batches walk users in
    primary-key order (:func:`backfill_batch`, so each costs the same however
    far the walk has got); a final :func:`backfill` allocates anyone the walk
    left behind (a user whose signup allocation failed behind the cursor) and
    gives the users' totals. Memory stays flat: each batch is one SQL call, no
    user is loaded into Python.

    **Commits.** Every batch, and the final call, is a transaction of its own,
    committed before the next starts: a psycopg connection in autocommit mode
    commits each call by itself; one not in autocommit mode gets a BEGIN ...
    COMMIT around each call; a SQLAlchemy Engine runs each in its own
    transaction, a SQLAlchemy Connection outside a transaction in one it begins
    and commits. **A connection inside a transaction is refused** (nothing is
    sent): this function would otherwise commit the caller's pending work with
    its first batch. To backfill inside your own transaction, call
    :func:`backfill` there. If a batch fails, or ``on_batch`` raises, the
    batches before it stay committed; running it again carries on (users who
    have credits are never allocated twice).

    Parameters:
        conn: a psycopg Connection or SQLAlchemy Connection outside any
            transaction, or a SQLAlchemy Engine.
        batch_size: users per batch (1 .. 2^31-1).
        on_batch: called after each call with the number of users it allocated
            (the final call's too), e.g. to advance a progress bar.

    Returns:
        The whole walk as one summary: users allocated, credits, fallback and
        skipped users summed over every call, ``by_role`` merged;
        ``users_total`` as the final call counted.

    Raises:
        InvalidArgument: ``conn`` is inside a transaction, or ``batch_size`` is
            out of range (nothing is sent).
    """
    walk = _calls.BackfillWalk(batch_size, on_batch)
    while (call := walk.next_batch()) is not None:
        walk.add_batch(run_committed(conn, call))
    return walk.finish(run_committed(conn, walk.final_call()))


def allocation_report(conn: SyncConnection) -> AllocationReport:
    """Users with and without credits, and credits held per role."""
    return run(conn, _calls.allocation_report())


def debit(
    conn: SyncConnection,
    user_id: UserId,
    amount: int,
    *,
    source: str = "usage",
    description: str | None = None,
    idempotency_key: str | None = None,
) -> CreditOperation:
    """Spend ``amount`` credits: from the user's own account, else whole from their team pool.

    Parameters:
        conn: where to run it; joins the caller's transaction.
        user_id: who spends.
        amount: credits to spend (1 .. 2^31-1).
        source: what the credits were spent on (logged).
        description: free text (logged).
        idempotency_key: makes the call safe to retry: a second call with the same
            key returns the first result with ``replayed=True`` and changes nothing.

    Raises:
        InsufficientCredits, UnknownUser, InvalidAmount, IdempotencyConflict.
    """
    return run(conn, _calls.debit(user_id, amount, source=source, description=description,
                                  idempotency_key=idempotency_key))


def grant(
    conn: SyncConnection,
    user_id: UserId,
    amount: int,
    *,
    source: str = "admin_grant",
    description: str | None = None,
    idempotency_key: str | None = None,
    expires_at: datetime | None = None,
    priority: int | None = None,
) -> CreditOperation:
    """Add ``amount`` credits to the user's account (creating it if missing), as one lot.

    Parameters:
        expires_at: when the lot's unspent credits expire (a timezone-aware
            datetime in the future); None: never.
        priority: 0..100, lower spent first; None: the default 50. A lot with an
            expiry or another priority is tracked (see :func:`lots`).
        idempotency_key: a retry with the same key (and the same amount, source,
            expiry and priority) returns the first grant with ``replayed=True``.

    Raises:
        UnknownUser, InvalidAmount (also when the total would pass 2^31-1),
        IdempotencyConflict (the key with another amount, source, expiry or priority),
        InvalidArgument: ``expires_at`` is naive (``field="expires_at"``, nothing
            is sent) or not in the future, ``priority`` outside 0..100.
    """
    return run(conn, _calls.grant(user_id, amount, source=source, description=description,
                                  idempotency_key=idempotency_key, expires_at=expires_at,
                                  priority=priority))


def refund(conn: SyncConnection, log_id: int, *, description: str | None = None
           ) -> CreditOperation:
    """Reverse the debit logged as ``log_id`` onto the account it came from, at most once.

    Raises:
        AlreadyRefunded: not a debit, unknown, or refunded already.
    """
    return run(conn, _calls.refund(log_id, description=description))


def balance(conn: SyncConnection, user_id: UserId) -> Balance:
    """The user's own balance, team pool and ``spendable`` amount.

    Raises:
        UnknownUser.
    """
    return run(conn, _calls.balance(user_id))


def lots(conn: SyncConnection, user_id: UserId) -> list[CreditLot]:
    """The user's lots in spending order (priority, soonest expiry, oldest), with what
    is left of each and its state (``open``, ``lapsed``, ``expired``, ``spent``);
    empty for a user without a balance row.

    Raises:
        UnknownUser.
        PermissionDenied: a credits_user asked for another user's lots.
    """
    return run(conn, _calls.lots(user_id))


def expire(conn: SyncConnection, *, as_of: datetime | None = None, limit: int | None = None
           ) -> ExpirySummary:
    """Expire what lapsed lots still hold: one ``expire`` entry per lot, the balance's
    used credits up by as much. Idempotent (an expired lot holds nothing more).

    Parameters:
        conn: where to run it; joins the caller's transaction. The database role
            must be a member of credits_admin.
        as_of: expire the lots that lapsed at or before this time (timezone-aware;
            later than now expires early); None: the server's now().
        limit: at most this many lots, soonest expiry first; None: all.

    Accounts a debit, grant or refund holds at that moment are skipped
    (``accounts_skipped``), never waited for: run it again later.

    Raises:
        InvalidArgument: ``as_of`` is naive (``field="as_of"``, nothing sent), or
            ``limit`` is below 1.
        PermissionDenied: the role is not a member of credits_admin.
    """
    return run(conn, _calls.expire(as_of=as_of, limit=limit))


def expire_all(
    conn: SyncConnection,
    *,
    as_of: datetime | None = None,
    batch_size: int = 10_000,
    on_batch: Callable[[int], None] | None = None,
) -> ExpirySummary:
    """Expire every lapsed lot, ``batch_size`` lots per call, each call committed on its own.

    What ``credits-db expire --batch-size N`` runs. Calls :func:`expire` with
    ``limit=batch_size`` until a call expires nothing. The first call's
    ``as_of`` (now when None) is passed to every later one, so the walk expires
    what had lapsed by that moment. Commits as :func:`backfill_all` does: each
    call is a transaction of its own, and **a connection inside a transaction is
    refused** (nothing is sent); to expire inside your transaction, call
    :func:`expire` there. If it stops half way, the batches before stay
    committed and running it again carries on.

    Parameters:
        conn: a psycopg Connection or SQLAlchemy Connection outside any
            transaction, or a SQLAlchemy Engine.
        as_of: as for :func:`expire`.
        batch_size: lots per call (1 .. 2^31-1).
        on_batch: called after each call with the lots it expired (the last,
            empty call's 0 too), e.g. to advance a progress bar.

    Returns:
        The walk as one summary: lots, credits and accounts summed over the
        calls; ``accounts_skipped`` as the last call found them (busy accounts
        still holding lapsed lots, left for the next run).

    Raises:
        InvalidArgument: ``conn`` is inside a transaction, ``as_of`` is naive, or
            ``batch_size`` is out of range (nothing is sent).
        PermissionDenied: the role is not a member of credits_admin.
    """
    walk = _calls.ExpiryWalk(batch_size, on_batch, as_of)
    while (call := walk.next_batch()) is not None:
        walk.add_batch(run_committed(conn, call, batched="expire_all", single="expire"))
    return walk.finish()


def add_team_member(conn: SyncConnection, team_admin_id: UserId, team_member_id: UserId) -> None:
    """Add a member to a team admin's pool; adding an existing pair again is a no-op.

    Raises:
        NotTeamAdmin, TeamFull, AlreadyInTeam, SelfTeamMembership, UnknownUser.
    """
    run(conn, _calls.add_team_member(team_admin_id, team_member_id))


def remove_team_member(conn: SyncConnection, team_admin_id: UserId, team_member_id: UserId
                       ) -> bool:
    """Remove a member from a team admin's pool; True if they were in it."""
    return run(conn, _calls.remove_team_member(team_admin_id, team_member_id))


def list_team_members(conn: SyncConnection, team_admin_id: UserId) -> list[TeamMember]:
    """The members of a team admin's pool, oldest first."""
    return run(conn, _calls.list_team_members(team_admin_id))


def verify(conn: SyncConnection) -> list[IntegrityProblem]:
    """Every violated invariant (balances vs ledger, negatives, pools); empty when all holds."""
    return run(conn, _calls.verify())


def history(conn: SyncConnection, user_id: UserId, *, limit: int = 50,
            cursor: str | None = None) -> list[LedgerEntry]:
    """One account's ledger rows, newest first; after ``cursor``, the rows after it.

    Raises:
        InvalidArgument: ``limit`` is below 1, or ``cursor`` is not one
            :func:`history_page` gave.
    """
    return run(conn, _calls.history(user_id, limit=limit, cursor=cursor))


def history_page(conn: SyncConnection, user_id: UserId, *, limit: int = 50,
                 cursor: str | None = None) -> HistoryPage:
    """One page of an account's ledger, newest first, and the cursor of the next page.

    Walk the whole ledger by passing each page's ``next_cursor`` as ``cursor``
    until it is None. A keyset: each page costs the same however deep it is, and
    rows logged meanwhile (newer than the first page) never shift a page.

    Raises:
        InvalidArgument: ``limit`` is below 1, or ``cursor`` is not one this gave.
    """
    return run(conn, _calls.history_page(user_id, limit=limit, cursor=cursor))


def overview(conn: SyncConnection, user_id: UserId) -> Overview:
    """What ``GET /api/billing/overview`` shows for a user: the balance (its next
    expiry, own and pool), the last usage rows, the own lots expiring within 30 days
    and, for an account without credits, why (``Overview.status``).

    Raises:
        UnknownUser: no such user.
        PermissionDenied: a credits_user asked for another user.
    """
    return run(conn, _calls.overview(user_id))


def explain_user(conn: SyncConnection, who: UserId) -> UserExplanation:
    """Everything that decides one user's credits, found by id or email: role,
    entitlement, balance row, pool, last entries, a recorded allocation failure and
    what the overview answers for them (``credits-db explain``, the admin lookup).

    Raises:
        UnknownUser: no user has that id or email.
        InvalidArgument: several users share the email.
    """
    user_id = run(conn, _calls.find_user(who))
    data = run(conn, _calls.explain_user(user_id))
    return UserExplanation.from_json(data, run(conn, _calls.overview(user_id)))


def allocation_failures(conn: SyncConnection, *, limit: int = 100) -> list[AllocationFailure]:
    """The recorded signup allocation failures, newest first (at most ``limit``)."""
    return run(conn, _calls.allocation_failures(limit=limit))


@contextmanager
def acting_as(conn: ConnectionT, user_id: UserId) -> Iterator[ConnectionT]:
    """Act as ``user_id`` for one transaction: the identity the self-only rules check.

    ``credits_current_user_id()`` (what ``debit`` and ``balance`` compare a
    ``credits_user`` with, and the row level security policies) reads the
    setting ``credits.user_id``; this sets it with ``set_config(..., true)``,
    transaction-local, inside a transaction the block opens. So the identity
    dies with the transaction: safe behind a transaction pooler (PgBouncer,
    Supabase's port 6543), where the next transaction on the same server
    connection may be another client's. Never ``SET credits.user_id`` for a
    session there.

    ::

        with credits_db.acting_as(conn, user_id):
            credits_db.debit(conn, user_id, 10)

    ``conn`` is a psycopg Connection (the block is ``conn.transaction()``) or a
    SQLAlchemy Connection (``conn.begin()``, or ``conn.begin_nested()`` inside
    the caller's transaction). The block is a transaction of its own (committed
    at its end, rolled back on an exception), or a savepoint inside the caller's
    transaction; there the caller's earlier value of ``credits.user_id`` is back
    after the block. Like ``conn.transaction()``, an error caught inside the
    block still aborts it. Where ``auth.uid()`` exists (Supabase) the database
    reads that instead.

    Yields:
        ``conn``.

    Raises:
        InvalidArgument: ``user_id`` is not a uuid, or ``conn`` is a SQLAlchemy
            Connection in AUTOCOMMIT (no transaction to scope the setting to);
            nothing is sent.
    """
    user = _calls.user_id_text(user_id)
    with _transaction(conn) as nested:
        previous = run(conn, _calls.acting_user()) if nested else None
        run(conn, _calls.act_as(user))
        yield conn
        if nested:
            run(conn, _calls.act_as(previous or ""))


@contextmanager
def _transaction(conn: psycopg.Connection[Any] | sa.Connection) -> Iterator[bool]:
    """A transaction of its own, or a savepoint inside the caller's; yields which."""
    if isinstance(conn, sa.Connection):
        driver = getattr(conn.connection, "driver_connection", None)
        if getattr(driver, "autocommit", False):
            raise InvalidArgument("acting_as needs a transaction: this SQLAlchemy connection "
                                  "is in AUTOCOMMIT, so the setting would end with its statement")
        nested = conn.in_transaction()
        with conn.begin_nested() if nested else conn.begin():
            yield nested
    else:
        nested = conn.info.transaction_status != TransactionStatus.IDLE
        with conn.transaction():
            yield nested
