"""The admin page's backfill as a background job: batched, with progress, one at a time.

A job is an asyncio task on the server's event loop, on a pooled connection of
its own, running :func:`credits_db.aio.backfill_all` (one committed transaction
per batch). Its progress lives in memory, in this process: a restarted server
forgets its jobs, and several server processes each have their own. The ledger is
the truth either way: what a batch committed stays, and a rerun allocates only
the users still waiting (the backfill is idempotent).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from credits_db import aio
from credits_db.http._queries import Pool
from credits_db.models import BackfillSummary

JobState = Literal["running", "done", "failed"]

KEPT_JOBS = 20
"""Finished jobs kept for their pages; older ones are forgotten."""


@dataclass
class BackfillJob:
    """One backfill run and its progress so far.

    Attributes:
        waiting: users without credits when the job started (None until counted).
        calls: batch calls committed so far (the closing call included).
        users_backfilled: users allocated by the committed calls.
        summary: the whole run's summary, once done.
        error: what stopped it, if it failed (committed batches stay).
    """

    id: str
    started_at: datetime
    waiting: int | None = None
    calls: int = 0
    users_backfilled: int = 0
    finished_at: datetime | None = None
    summary: BackfillSummary | None = None
    error: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False, compare=False)

    @property
    def state(self) -> JobState:
        """``running`` until the task ends, then ``done`` or ``failed``."""
        if self.finished_at is None:
            return "running"
        return "failed" if self.error is not None else "done"

    def record_call(self, users: int) -> None:
        """Count one committed call (``backfill_all``'s ``on_batch``)."""
        self.calls += 1
        self.users_backfilled += users


class BackfillJobs:
    """The jobs of one app: at most one running, the last :data:`KEPT_JOBS` kept."""

    def __init__(self, pool: Pool, *, batch_size: int) -> None:
        self._pool = pool
        self._batch_size = batch_size
        self._jobs: dict[str, BackfillJob] = {}

    def start(self) -> tuple[BackfillJob, bool]:
        """Start a job, or return the running one; True when this call started it.

        No await between the check and the start: on one event loop, two
        requests cannot both start a job.
        """
        running = self.running
        if running is not None:
            return running, False
        job = BackfillJob(id=uuid.uuid4().hex, started_at=datetime.now(UTC))
        job.task = asyncio.create_task(self._run(job), name=f"credits-db backfill {job.id}")
        self._jobs[job.id] = job
        for old in list(self._jobs)[:-KEPT_JOBS]:
            del self._jobs[old]
        return job, True

    async def _run(self, job: BackfillJob) -> None:
        try:
            async with self._pool.connection() as conn:
                job.waiting = (await aio.allocation_report(conn)).users_without_credits
                job.summary = await aio.backfill_all(conn, batch_size=self._batch_size,
                                                     on_batch=job.record_call)
        except asyncio.CancelledError:
            job.error = "cancelled: the server stopped"
            raise
        except Exception as exc:  # shown on the job's page; the ledger keeps what committed
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = datetime.now(UTC)

    def get(self, job_id: str) -> BackfillJob | None:
        """The job with this id, if this process still knows it."""
        return self._jobs.get(job_id)

    @property
    def running(self) -> BackfillJob | None:
        """The job under way, if any."""
        return next((j for j in self._jobs.values() if j.state == "running"), None)

    @property
    def latest_finished(self) -> BackfillJob | None:
        """The most recent job that has ended (done or failed), if any."""
        return next((j for j in reversed(self._jobs.values()) if j.state != "running"), None)
