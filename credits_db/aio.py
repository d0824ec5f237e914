"""The asyncio API: the same calls as :mod:`credits_db.functions`, on a psycopg AsyncConnection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from credits_db import _calls
from credits_db._calls import UserId
from credits_db._execute import arun, arun_committed
from credits_db._renewal_aio import renew as renew
from credits_db._renewal_aio import renew_all as renew_all
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

AsyncConnection = psycopg.AsyncConnection[Any]
AsyncConnectionT = TypeVar("AsyncConnectionT", bound=psycopg.AsyncConnection[Any])


async def backfill(
    conn: AsyncConnection, *, dry_run: bool = False, limit: int | None = None
) -> BackfillSummary:
    """Async :func:`credits_db.backfill`."""
    return await arun(conn, _calls.backfill(dry_run=dry_run, limit=limit))


async def backfill_batch(
    conn: AsyncConnection, *, after: UserId | None = None, limit: int = 50_000
) -> BackfillBatch:
    """Async :func:`credits_db.backfill_batch`."""
    return await arun(conn, _calls.backfill_batch(after=after, limit=limit))


async def backfill_all(conn: AsyncConnection, *, batch_size: int = 50_000,
                       on_batch: Callable[[int], None] | None = None) -> BackfillSummary:
    """Async :func:`credits_db.backfill_all`: each batch committed on its own.

    Autocommit connections commit each call by themselves, others get a
    transaction around each call; a connection inside a transaction is refused
    (``InvalidArgument``, nothing sent). ``on_batch`` is a plain function, called
    on the event loop after each call: keep it quick.
    """
    walk = _calls.BackfillWalk(batch_size, on_batch)
    while (call := walk.next_batch()) is not None:
        walk.add_batch(await arun_committed(conn, call))
    return walk.finish(await arun_committed(conn, walk.final_call()))


async def allocation_report(conn: AsyncConnection) -> AllocationReport:
    """Async :func:`credits_db.allocation_report`."""
    return await arun(conn, _calls.allocation_report())


async def debit(conn: AsyncConnection, user_id: UserId, amount: int, *, source: str = "usage",
                description: str | None = None, idempotency_key: str | None = None
                ) -> CreditOperation:
    """Async :func:`credits_db.debit`."""
    return await arun(conn, _calls.debit(user_id, amount, source=source, description=description,
                                         idempotency_key=idempotency_key))


async def grant(conn: AsyncConnection, user_id: UserId, amount: int, *,
                source: str = "admin_grant", description: str | None = None,
                idempotency_key: str | None = None, expires_at: datetime | None = None,
                priority: int | None = None) -> CreditOperation:
    """Async :func:`credits_db.grant`."""
    return await arun(conn, _calls.grant(user_id, amount, source=source, description=description,
                                         idempotency_key=idempotency_key, expires_at=expires_at,
                                         priority=priority))


async def refund(conn: AsyncConnection, log_id: int, *, description: str | None = None
                 ) -> CreditOperation:
    """Async :func:`credits_db.refund`."""
    return await arun(conn, _calls.refund(log_id, description=description))


async def balance(conn: AsyncConnection, user_id: UserId) -> Balance:
    """Async :func:`credits_db.balance`."""
    return await arun(conn, _calls.balance(user_id))


async def lots(conn: AsyncConnection, user_id: UserId) -> list[CreditLot]:
    """Async :func:`credits_db.lots`."""
    return await arun(conn, _calls.lots(user_id))


async def expire(conn: AsyncConnection, *, as_of: datetime | None = None,
                 limit: int | None = None) -> ExpirySummary:
    """Async :func:`credits_db.expire`."""
    return await arun(conn, _calls.expire(as_of=as_of, limit=limit))


async def expire_all(conn: AsyncConnection, *, as_of: datetime | None = None,
                     batch_size: int = 10_000, on_batch: Callable[[int], None] | None = None
                     ) -> ExpirySummary:
    """Async :func:`credits_db.expire_all`: each call committed on its own.

    A connection inside a transaction is refused (``InvalidArgument``, nothing
    sent). ``on_batch`` is a plain function, called on the event loop after each
    call: keep it quick.
    """
    walk = _calls.ExpiryWalk(batch_size, on_batch, as_of)
    while (call := walk.next_batch()) is not None:
        walk.add_batch(await arun_committed(conn, call, batched="expire_all", single="expire"))
    return walk.finish()


async def add_team_member(conn: AsyncConnection, team_admin_id: UserId, team_member_id: UserId
                          ) -> None:
    """Async :func:`credits_db.add_team_member`."""
    await arun(conn, _calls.add_team_member(team_admin_id, team_member_id))


async def remove_team_member(conn: AsyncConnection, team_admin_id: UserId,
                             team_member_id: UserId) -> bool:
    """Async :func:`credits_db.remove_team_member`."""
    return await arun(conn, _calls.remove_team_member(team_admin_id, team_member_id))


async def list_team_members(conn: AsyncConnection, team_admin_id: UserId) -> list[TeamMember]:
    """Async :func:`credits_db.list_team_members`."""
    return await arun(conn, _calls.list_team_members(team_admin_id))


async def verify(conn: AsyncConnection) -> list[IntegrityProblem]:
    """Async :func:`credits_db.verify`."""
    return await arun(conn, _calls.verify())


async def history(conn: AsyncConnection, user_id: UserId, *, limit: int = 50,
                  cursor: str | None = None) -> list[LedgerEntry]:
    """Async :func:`credits_db.history`."""
    return await arun(conn, _calls.history(user_id, limit=limit, cursor=cursor))


async def history_page(conn: AsyncConnection, user_id: UserId, *, limit: int = 50,
                       cursor: str | None = None) -> HistoryPage:
    """Async :func:`credits_db.history_page`."""
    return await arun(conn, _calls.history_page(user_id, limit=limit, cursor=cursor))


async def overview(conn: AsyncConnection, user_id: UserId) -> Overview:
    """See :func:`credits_db.overview`."""
    return await arun(conn, _calls.overview(user_id))


async def explain_user(conn: AsyncConnection, who: UserId) -> UserExplanation:
    """See :func:`credits_db.explain_user`."""
    user_id = await arun(conn, _calls.find_user(who))
    data = await arun(conn, _calls.explain_user(user_id))
    return UserExplanation.from_json(data, await arun(conn, _calls.overview(user_id)))


async def allocation_failures(conn: AsyncConnection, *, limit: int = 100
                              ) -> list[AllocationFailure]:
    """See :func:`credits_db.allocation_failures`."""
    return await arun(conn, _calls.allocation_failures(limit=limit))


@asynccontextmanager
async def acting_as(conn: AsyncConnectionT, user_id: UserId) -> AsyncIterator[AsyncConnectionT]:
    """Async :func:`credits_db.acting_as`: act as ``user_id`` for one transaction.

    ``set_config('credits.user_id', ..., true)`` inside ``conn.transaction()``:
    the identity dies with the transaction, so nothing leaks to the next client
    of a pooled server connection. Nested in the caller's transaction it is a
    savepoint, and the caller's earlier value is back after the block.

    ::

        async with aio.acting_as(conn, user_id):
            await aio.debit(conn, user_id, 10)

    Raises:
        InvalidArgument: ``user_id`` is not a uuid (nothing is sent).
    """
    user = _calls.user_id_text(user_id)
    nested = conn.info.transaction_status != TransactionStatus.IDLE
    async with conn.transaction():
        previous = await arun(conn, _calls.acting_user()) if nested else None
        await arun(conn, _calls.act_as(user))
        yield conn
        if nested:
            await arun(conn, _calls.act_as(previous or ""))
