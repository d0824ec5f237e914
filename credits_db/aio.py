"""The asyncio API: the same calls as :mod:`credits_db.functions`, on a psycopg AsyncConnection."""

from __future__ import annotations

from typing import Any

import psycopg

from credits_db import _calls
from credits_db._execute import arun
from credits_db.models import AllocationReport, BackfillSummary

AsyncConnection = psycopg.AsyncConnection[Any]


async def backfill(
    conn: AsyncConnection, *, dry_run: bool = False, limit: int | None = None
) -> BackfillSummary:
    """Async :func:`credits_db.backfill`."""
    return await arun(conn, _calls.backfill(dry_run=dry_run, limit=limit))


async def allocation_report(conn: AsyncConnection) -> AllocationReport:
    """Async :func:`credits_db.allocation_report`."""
    return await arun(conn, _calls.allocation_report())
