"""Sizes, measurements, the A/B alternation and the statistics over repetitions."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent

JsonDict = dict[str, Any]

WORKLOADS = ("backfill", "signup", "debit", "python", "pool", "growth", "lots", "renewal")
"""The workloads ``--only`` may name, in the order they run."""


@dataclass(frozen=True)
class Sizes:
    """How big each workload is (full mode or --quick)."""

    mode: str
    backfill_users: int
    signup_batch: int
    accounts: int
    python_calls: int
    growth_users: tuple[int, ...]
    growth_log: tuple[int, ...]
    pgbench_seconds: int
    growth_seconds: int
    clients: tuple[int, ...]
    keyed_clients: tuple[int, ...]
    ladder_calls: int = 3000
    expire_lots: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    """Workload 7: lots expired by one sweep (LOTS_PER_ACCOUNT on each account)."""
    span_transactions: int = 2000
    """Workload 7: debits per client of the two-of-five-lots rows, each on a fresh account."""
    renew_accounts: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    """Workload 8: accounts renewed by one renew_allowances() call."""
    reps: int = 3
    short_reps: int = 5
    """Repetitions of the rows whose runs take seconds at most: one slow run moves a median of 3."""


FULL = Sizes("full", 1_000_000, 100_000, 100_000, 4000, (10_000, 100_000, 1_000_000),
             (1_000_000, 10_000_000), pgbench_seconds=5, growth_seconds=3, clients=(1, 8, 32),
             keyed_clients=(8, 32))
QUICK = Sizes("quick", 20_000, 10_000, 10_000, 200, (1_000, 5_000, 10_000), (10_000, 50_000),
              pgbench_seconds=1, growth_seconds=1, clients=(1, 8, 32),
              keyed_clients=(8,), ladder_calls=200, short_reps=3,
              expire_lots=(1_000, 5_000), span_transactions=50, renew_accounts=(1_000, 5_000))


def sql_text(name: str) -> str:
    """The text of bench/<name>.sql."""
    return (HERE / f"{name}.sql").read_text()


def sql_bytes(name: str) -> bytes:
    """bench/<name>.sql as a query psycopg accepts (read from a file, so not a literal)."""
    return sql_text(name).encode()


@dataclass
class Sample:
    """One measurement: the value and anything worth reporting next to it."""

    value: float
    extra: JsonDict = field(default_factory=dict)


@dataclass
class Series:
    """The repetitions of one side (A: credits-db, B: baseline)."""

    label: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def values(self) -> list[float]:
        return [s.value for s in self.samples]

    def summary(self) -> JsonDict:
        values = self.values
        extras: JsonDict = {}
        for sample in self.samples:
            for key, value in sample.extra.items():
                extras.setdefault(key, []).append(value)
        return {
            "label": self.label,
            "samples": values,
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "extra": extras,
        }


Direction = Literal["lower", "higher"]


@dataclass
class Result:
    """One row of the results table: a workload next to its baseline."""

    id: str
    workload: str
    name: str
    unit: str
    direction: Direction
    a: Series
    b: Series | None
    target: float | None
    notes: list[str] = field(default_factory=list)
    extra: JsonDict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.b is None:
            return None
        return statistics.median(self.a.values) / statistics.median(self.b.values)

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if self.target is None or ratio is None:
            return None
        return ratio <= self.target if self.direction == "lower" else ratio >= self.target

    def to_json(self) -> JsonDict:
        return {
            "id": self.id,
            "workload": self.workload,
            "name": self.name,
            "unit": self.unit,
            "better": self.direction,
            "a": self.a.summary(),
            "b": None if self.b is None else self.b.summary(),
            "ratio": self.ratio,
            "target": None if self.target is None else
            {"op": "<=" if self.direction == "lower" else ">=", "value": self.target},
            "met": self.met,
            "notes": self.notes,
            "extra": self.extra,
        }


def alternate(reps: int, sides: list[tuple[str, Callable[[], Sample]]],
              log: Callable[[str], None] = lambda _m: None) -> list[Series]:
    """Run the sides in turn, A B A B ... (or A B C A B C ...), ``reps`` times each.

    Each callable resets its own state before it measures.
    """
    series = [Series(label) for label, _action in sides]
    for rep in range(reps):
        for (label, action), into in zip(sides, series, strict=True):
            sample = action()
            into.samples.append(sample)
            log(f"    rep {rep + 1}/{reps} {label}: {sample.value:.4g}")
    return series


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes (monotonic clock)."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (fraction 0.99 for p99)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
