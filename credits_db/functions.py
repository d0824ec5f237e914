"""The synchronous API: one function per SQL function.

Each takes ``conn`` (a psycopg Connection, a SQLAlchemy Connection or Engine)
and joins its transaction; see :mod:`credits_db._execute`.
"""

from __future__ import annotations

from credits_db import _calls
from credits_db._execute import SyncConnection, run
from credits_db.models import AllocationReport, BackfillSummary


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


def allocation_report(conn: SyncConnection) -> AllocationReport:
    """Users with and without credits, and credits held per role."""
    return run(conn, _calls.allocation_report())
