"""The async allowance renewal (:func:`credits_db.aio.renew`, :func:`credits_db.aio.renew_all`):
the calls and the walk of :mod:`credits_db._renewal`, on a psycopg AsyncConnection."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from credits_db._execute import arun, arun_committed
from credits_db._renewal import (
    DEFAULT_BATCH_SIZE,
    RenewalWalk,
    refuse_open_transaction,
    renew_call,
)
from credits_db.models import RenewalSummary


async def renew(conn: psycopg.AsyncConnection[Any], *, as_of: datetime | None = None,
                limit: int | None = None) -> RenewalSummary:
    """Async :func:`credits_db.renew`: joins the caller's transaction."""
    return await arun(conn, renew_call(as_of=as_of, limit=limit))


async def renew_all(conn: psycopg.AsyncConnection[Any], *, as_of: datetime | None = None,
                    batch_size: int = DEFAULT_BATCH_SIZE,
                    on_batch: Callable[[int], None] | None = None) -> RenewalSummary:
    """Async :func:`credits_db.renew_all`: each batch committed on its own.

    A connection inside a transaction is refused (``InvalidArgument``, nothing
    sent). ``on_batch`` is a plain function, called on the event loop after each
    call: keep it quick.
    """
    walk = RenewalWalk(batch_size, as_of, on_batch)
    refuse_open_transaction(conn)
    while (call := walk.next_batch()) is not None:
        walk.add_batch(await arun_committed(conn, call))
    return walk.finish()

