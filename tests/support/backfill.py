"""Shared by the backfill tests (no tests here): workers started at one instant."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def run_together(workers: list[Callable[[], Any]]) -> list[Any]:
    """Start all workers at the same instant; re-raise the first failure."""
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)
    errors: list[BaseException] = []

    def body(index: int, work: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[index] = work()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i, w)) for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
