"""The eight workloads, each measured next to its baseline (A B A B ...)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

import credits_db
from bench.core import JsonDict, Result, Sample, Series, Sizes, alternate, sql_bytes, sql_text
from bench.pgb import Pgbench
from bench.server import BenchServer, Conn, execute_script
from credits_db import aio, migrate

REPLACED_SLEEP_SECONDS = 0.1
"""The replaced system slept 100 ms per user in its backfill loop."""

CLI_BATCH = 50_000


@dataclass
class Context:
    """What every workload needs, and where results go."""

    server: BenchServer
    sizes: Sizes
    pgbench: Pgbench
    plans_dir: Path
    log: Callable[[str], None]
    results: list[Result] = field(default_factory=list)
    facts: JsonDict = field(default_factory=dict)
    backfill_series: dict[int, list[Series]] = field(default_factory=dict)

    def add(self, result: Result) -> None:
        self.results.append(result)
        ratio = result.ratio
        self.log(f"  -> {result.name}: A median {statistics.median(result.a.values):.4g} "
                 f"{result.unit}" + ("" if ratio is None else f", ratio {ratio:.3f}")
                 + ("" if result.met is None else f" ({'met' if result.met else 'MISSED'})"))


def _state(conn: Conn) -> JsonDict:
    """What a backfill or signup left behind, to check A and B did the same work."""
    row = conn.execute(
        b"SELECT (SELECT count(*) FROM user_credits),"
        b" (SELECT sum(total_credits) FROM user_credits),"
        b" (SELECT sum(allocated_credits) FROM user_credits),"
        b" (SELECT count(*) FROM credit_usage_log),"
        b" (SELECT count(*) FROM credit_usage_log WHERE description IS NOT NULL),"
        b" (SELECT sum(amount) FROM credit_usage_log)").fetchone()
    assert row is not None
    return {"balances": int(row[0]), "credits": int(row[1] or 0), "allocated": int(row[2] or 0),
            "log_rows": int(row[3]), "described_log_rows": int(row[4]),
            "log_sum": int(row[5] or 0)}


def _same_work(series: list[Series], keys: tuple[str, ...]) -> list[str]:
    """Notes if the sides did not leave the same rows behind."""
    seen: dict[str, set[Any]] = {}
    for one in series:
        for sample in one.samples:
            for key in keys:
                seen.setdefault(key, set()).add(sample.extra.get(key))
    odd = {key: sorted(values) for key, values in seen.items() if len(values) > 1}
    if odd:
        return [f"WARNING: the sides left different rows behind: {odd}"]
    return [f"same rows written by every side and repetition: "
            f"{ {key: next(iter(values)) for key, values in seen.items()} }"]


# ---------------------------------------------------------------------- 1. backfill


def _backfill_sides(ctx: Context, users: int, *, analyzed: bool = False
                    ) -> list[tuple[str, Callable[[], Sample]]]:
    server = ctx.server
    template = server.users_template(users, analyze_empty_balances=analyzed)
    run_db = server.name("bf_run")

    def fresh() -> str:
        url = server.create(run_db, template)
        server.checkpoint()
        return url

    def statement(name: str) -> Callable[[], Sample]:
        def action() -> Sample:
            fresh()
            with server.connect(run_db) as conn:
                start = time.perf_counter()
                conn.execute(sql_bytes(name), {})
                seconds = time.perf_counter() - start
                return Sample(seconds, _state(conn))
        return action

    def cli() -> Sample:
        url = fresh()
        proc = subprocess.Popen(  # noqa: S603 - this interpreter, our module
            [sys.executable, "-m", "bench._backfill_child", url, str(CLI_BATCH)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parent.parent))
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"batched backfill failed: {err.decode()[-2000:]}")
        report = json.loads(out.decode().strip().splitlines()[-1])
        with server.connect(run_db) as conn:
            state = _state(conn)
        # ru_maxrss is in kilobytes on Linux.
        state["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
        return Sample(float(report["seconds"]), state)

    return [("backfill_user_credits()", statement("backfill_function")),
            ("bare WITH ins AS (INSERT ...) INSERT", statement("backfill_baseline")),
            (f"CLI batched backfill (batch {CLI_BATCH})", cli)]


def backfill(ctx: Context) -> None:
    users = ctx.sizes.backfill_users
    ctx.log(f"1. backfill of {users:,} users")
    ctx.server.users_template(users)
    fn, bare, cli = alternate(ctx.sizes.reps, _backfill_sides(ctx, users), ctx.log)
    ctx.server.drop(ctx.server.name("bf_run"))
    ctx.backfill_series[users] = [fn, bare, cli]
    notes = _same_work([fn, bare, cli], ("balances", "credits", "allocated", "log_rows",
                                         "described_log_rows"))
    replaced = users * REPLACED_SLEEP_SECONDS
    ctx.facts["replaced_system_backfill_seconds"] = replaced
    ctx.add(Result("backfill", "1. backfill", f"backfill {users:,} users, one call", "s",
                   "lower", fn, bare, 1.20,
                   [*notes, f"the replaced loop (100 ms sleep per user) would take "
                            f"{replaced:,.0f} s = {replaced / 3600:.1f} h (computed, not run)"]))
    rss = cli.summary()["extra"].get("peak_rss_mb", [])
    ctx.add(Result("backfill_cli", "1. backfill",
                   f"CLI batched backfill {users:,} users (batch {CLI_BATCH:,})", "s", "lower",
                   cli, bare, 1.50, [f"Python peak RSS per run (MB): {rss}"],
                   {"peak_rss_mb": rss}))

    # A hazard this bench once found: after a VACUUM ANALYZE of the still-empty
    # user_credits, the batched call recounted the remaining candidates with a
    # nested-loop anti join over a seq scan of user_credits, which the same
    # statement had just filled: quadratic. Kept as a regression check.
    small = min(users, 20_000)
    ctx.log(f"1. backfill hazard: {small:,} users, user_credits analyzed while empty")
    _fn, bare, cli = alternate(ctx.sizes.short_reps, _backfill_sides(ctx, small, analyzed=True),
                               ctx.log)
    ctx.server.drop(ctx.server.name("bf_run"))
    ctx.add(Result("backfill_cli_analyzed", "1. backfill",
                   f"CLI batched backfill {small:,} users, user_credits ANALYZEd while empty",
                   "s", "lower", cli, bare, 1.50,
                   ["regression check: batches planned with user_credits analyzed while "
                    "empty once went quadratic (a recount by nested-loop anti join); "
                    "see the git history of docs/performance.md",
                    f"single call (no p_limit) on the same state: median "
                    f"{statistics.median(_fn.values):.3g} s"]))


# ---------------------------------------------------------------------- 2. signup


def signup(ctx: Context) -> None:
    server, sizes = ctx.server, ctx.sizes
    n = sizes.signup_batch
    ctx.log(f"2. signup: INSERT ... SELECT of {n:,} users")
    schema = server.schema_template()
    run_db = server.name("signup_run")

    def batch(name: str, trigger: bool) -> Callable[[], Sample]:
        def action() -> Sample:
            server.create(run_db, schema)
            with server.connect(run_db) as conn:
                if not trigger:
                    conn.execute(b"ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
                server.checkpoint()
                start = time.perf_counter()
                conn.execute(sql_bytes(name), {"n": n})
                seconds = time.perf_counter() - start
                return Sample(seconds, _state(conn))
        return action

    fn, bare = alternate(sizes.short_reps, [
        ("INSERT ... SELECT with trigger", batch("signup_batch", True)),
        ("trigger disabled, one set-based CTE statement", batch("signup_batch_baseline", False)),
    ], ctx.log)
    server.drop(run_db)
    ctx.add(Result("signup_batch", "2. signup", f"bulk signup of {n:,} users", "s", "lower",
                   fn, bare, 1.20,
                   _same_work([fn, bare], ("balances", "credits", "allocated", "log_rows",
                                           "described_log_rows"))))

    clients = 8
    ctx.log(f"2. signup: single-row INSERTs from {clients} connections")
    with_trigger, without = server.name("signup_fn"), server.name("signup_bare")
    contract = server.name("signup_contract_floor")
    for database in (with_trigger, without, contract):
        server.create(database, schema)
    with server.connect(without) as conn:
        conn.execute(b"ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
    with server.connect(contract) as conn:
        conn.execute(sql_bytes("signup_contract_floor_trigger"))

    def single(database: str) -> Callable[[], Sample]:
        def action() -> Sample:
            server.checkpoint()
            return ctx.pgbench.run(server.url(database), script="pgbench_signup",
                                   clients=clients, seconds=sizes.pgbench_seconds)
        return action

    def ledger_floor() -> Sample:
        server.checkpoint()
        return ctx.pgbench.run(server.url(without), script="pgbench_signup_bare_ledger",
                               clients=clients, seconds=sizes.pgbench_seconds)

    fn, bare, floor, contract_floor = alternate(sizes.reps, [
        ("INSERT with trigger", single(with_trigger)),
        ("INSERT, trigger disabled", single(without)),
        ("user, balance and log row in one bare statement", ledger_floor),
        ("INSERT with the contract-floor trigger", single(contract)),
    ], ctx.log)
    with server.connect(with_trigger) as conn:
        row = conn.execute(b"SELECT (SELECT count(*) FROM users),"
                           b" (SELECT count(*) FROM user_credits),"
                           b" (SELECT count(*) FROM verify_credit_integrity())").fetchone()
    assert row is not None
    notes = [f"with trigger: {row[0]} users, {row[1]} balance rows, {row[2]} integrity problems",
             "the baseline writes only the users row (no credits): the target allows 1.50"]
    for database in (with_trigger, without, contract):
        server.drop(database)
    ctx.add(Result("signup_single", "2. signup", f"single-row signups, {clients} connections",
                   "tps", "higher", fn, bare, 1 / 1.50, notes))
    # The floor: the same three rows per signup written by one bare statement,
    # against the same one-row baseline. The trigger cannot beat it.
    ctx.add(Result("signup_single_floor", "2. signup",
                   f"floor: user + balance + log in one bare statement, {clients} connections",
                   "tps", "higher", floor, bare, None,
                   ["the least SQL writing what a signup with credits must write "
                    "(pgbench_signup_bare_ledger.sql), vs the one-row INSERT (B)"]))
    ctx.add(Result("signup_single_vs_floor", "2. signup",
                   f"single-row signups with trigger vs that floor, {clients} connections",
                   "tps", "higher", fn, floor, None,
                   ["what the trigger itself costs (statement trigger, transition table, "
                    "EXCEPTION subtransaction, SECURITY DEFINER) over the same rows"]))
    ctx.add(Result("signup_single_contract_floor", "2. signup",
                   f"contract floor: the least trigger keeping the signup contract vs the "
                   f"one-row INSERT, {clients} connections", "tps", "higher", contract_floor, bare,
                   None, ["statement trigger with transition table, EXCEPTION block, SECURITY "
                          "DEFINER with pinned search_path, least body "
                          "(bench/signup_contract_floor_trigger.sql)"]))
    ctx.add(Result("signup_single_vs_contract", "2. signup",
                   f"single-row signups with trigger vs that contract floor, {clients} "
                   "connections", "tps", "higher", fn, contract_floor, None,
                   ["what the package's trigger costs beyond the contract it must keep"]))


# ---------------------------------------------------------------------- 3. debit


def accounts_db(ctx: Context, users: int, suffix: str) -> str:
    """A copy of the ``users`` template, backfilled, with bench_ids."""
    server = ctx.server
    name = server.name(suffix)
    server.create(name, server.users_template(users))
    with server.connect(name) as conn:
        conn.execute(sql_bytes("backfill_function"), {})
        execute_script(conn, "bench_ids")
    return name


def _debit_pair(ctx: Context, database: str, a_script: str, b_script: str, clients: int,
                seconds: int, defines: dict[str, str], *, options: str | None = None,
                also: tuple[str, ...] = ()) -> list[Series]:
    """pgbench A, B and the scripts in ``also`` in turn (A B [C ...] A B ...); a series each."""
    url = ctx.server.url(database)

    def side(script: str) -> Callable[[], Sample]:
        def action() -> Sample:
            ctx.server.checkpoint()
            return ctx.pgbench.run(url, script=script, clients=clients, seconds=seconds,
                                   defines=defines, options=options)
        return action

    scripts = [a_script, b_script, *also]
    return alternate(ctx.sizes.reps, [(script, side(script)) for script in scripts], ctx.log)


def _p99_note(series: list[Series]) -> list[str]:
    notes = []
    for one in series:
        p99 = one.summary()["extra"].get("latency_p99_ms", [])
        failed = sum(one.summary()["extra"].get("failed", []))
        notes.append(f"{one.label}: p99 ms {[round(x, 2) for x in p99]}, failed {failed}")
    return notes


def _add_floors(ctx: Context, prefix: str, where: str, *, package: Series, bare: Series,
                function: Series | None, contract: Series) -> None:
    """The floor rows of one debit load: each floor vs bare, and the package vs its floor."""
    if function is not None:
        ctx.add(Result(f"{prefix}_floor", "3. debit",
                       f"floor: bare statement in the least PL/pgSQL function vs bare, {where}",
                       "tps", "higher", function, bare, None,
                       [*_p99_note([function]), "what calling any function costs"]))
    ctx.add(Result(f"{prefix}_contract_floor", "3. debit",
                   f"contract floor: the least function keeping the debit contract vs bare, "
                   f"{where}", "tps", "higher", contract, bare, None,
                   [*_p99_note([contract]),
                    "jsonb result, SECURITY DEFINER with pinned search_path, permission check"
                    + (", advisory lock, key lookup and key row (credit_idempotency_keys)"
                       if "key" in prefix else "")
                    + " (bench/debit_contract_floor_function.sql): what the contract costs"]))
    ctx.add(Result(f"{prefix}_vs_contract", "3. debit",
                   f"debit_credits() vs that contract floor, {where}", "tps", "higher",
                   package, contract, None,
                   ["what debit_credits() costs beyond the contract it must keep"]))


def _debit_ladder(ctx: Context, database: str) -> None:
    """Server time per committed debit, one session, each rung adding one piece."""
    calls, accounts = ctx.sizes.ladder_calls, ctx.sizes.accounts
    ctx.log(f"  cost ladder: {calls} committed calls per rung, one session")
    with ctx.server.connect(database) as conn:
        conn.execute(b"SET synchronous_commit = off")
        series = alternate(ctx.sizes.short_reps,
                           [(name, _ladder_rung(conn, name, calls, accounts))
                            for name, _ in DEBIT_LADDER], ctx.log)
    bare = series[0]
    for (name, label), one, below in zip(DEBIT_LADDER[1:], series[1:], series[:-1],
                                         strict=True):
        step = statistics.median(one.values) - statistics.median(below.values)
        ctx.add(Result(f"debit_ladder_{name}", "3. debit",
                       f"cost ladder, one session: {label} vs bare", "us/call", "lower",
                       one, bare, None,
                       [f"{step:+.1f} us per call over the rung above "
                        "(bench/debit_cost_ladder.sql)"]))


def _ladder_rung(conn: Conn, name: str, calls: int, accounts: int) -> Callable[[], Sample]:
    """One rung of bench/debit_cost_ladder.sql: mean microseconds per committed call."""
    def action() -> Sample:
        row = conn.execute(b"CALL bench_debit_ladder(%s, %s, %s)",
                           (name, calls, accounts)).fetchone()
        assert row is not None
        return Sample(float(row[0]))
    return action


DEBIT_LADDER = (
    ("bare", "the bare statement"),
    ("function", "in the least PL/pgSQL function"),
    ("result", "+ the jsonb result"),
    ("definer", "+ SECURITY DEFINER, pinned search_path"),
    ("contract", "+ the permission check (the contract floor)"),
    ("package", "debit_credits()"),
)
"""The rungs of bench/debit_cost_ladder.sql, each adding one piece to the one above."""


def debit(ctx: Context) -> str:
    server, sizes = ctx.server, ctx.sizes
    n = sizes.accounts
    ctx.log(f"3. debit throughput over {n:,} accounts")
    database = accounts_db(ctx, n, "debit")
    with server.connect(database) as conn:
        for script in ("debit_floor_function", "debit_contract_floor_function",
                       "debit_cost_ladder"):
            conn.execute(sql_bytes(script), {})
    defines = {"accounts": str(n)}
    for clients in sizes.clients:
        ctx.log(f"  {clients} client(s)")
        # Under load two more sides run between A and B: the bare statement in
        # the least PL/pgSQL function (the floor of any function-based API) and
        # the least function keeping the debit contract (the floor of this API).
        floors = (("pgbench_debit_floor", "pgbench_debit_contract_floor") if clients > 1
                  else ())
        series = _debit_pair(ctx, database, "pgbench_debit", "pgbench_debit_bare", clients,
                             sizes.pgbench_seconds, defines, also=floors)
        ctx.add(Result(f"debit_c{clients}", "3. debit",
                       f"debit_credits() vs bare UPDATE+INSERT, {clients} client(s)", "tps",
                       "higher", series[0], series[1], None if clients == 1 else 0.90,
                       _p99_note(series[:2])))
        if floors:
            _add_floors(ctx, f"debit_c{clients}", f"{clients} clients",
                        package=series[0], bare=series[1], function=series[2],
                        contract=series[3])
    for clients in sizes.keyed_clients:
        ctx.log(f"  idempotency key, {clients} clients")
        series = _debit_pair(ctx, database, "pgbench_debit_key", "pgbench_debit_key_bare",
                             clients, sizes.pgbench_seconds, defines,
                             also=("pgbench_debit_key_contract_floor",))
        ctx.add(Result(f"debit_key_c{clients}", "3. debit",
                       f"debit_credits() with idempotency key vs bare, {clients} clients",
                       "tps", "higher", series[0], series[1], 0.80, _p99_note(series[:2])))
        _add_floors(ctx, f"debit_key_c{clients}", f"with key, {clients} clients",
                    package=series[0], bare=series[1], function=None, contract=series[2])
    _debit_ladder(ctx, database)
    with server.connect(database) as conn:
        row = conn.execute(b"SELECT count(*) FROM verify_credit_integrity()").fetchone()
    assert row is not None
    ctx.facts["debit_integrity_problems"] = int(row[0])

    ctx.log("  pgbench tpcb-like (context)")
    tpcb = server.name("tpcb")
    url = server.create(tpcb)
    subprocess.run([str(ctx.pgbench.binary), "-i", "-s", "1", "-q", url],  # noqa: S603
                   check=True,
                   capture_output=True)

    def builtin() -> Sample:
        server.checkpoint()
        return ctx.pgbench.run(url, script=None, clients=8, seconds=sizes.pgbench_seconds)

    (tpcb_series,) = alternate(sizes.reps, [("pgbench tpcb-like -s 1", builtin)], ctx.log)
    server.drop(tpcb)
    ctx.add(Result("tpcb_c8", "3. debit", "pgbench built-in tpcb-like, 8 clients (context)",
                   "tps", "higher", tpcb_series, None, None, _p99_note([tpcb_series])))
    return database


# ---------------------------------------------------------------------- 4. hot pool


def hot_pool(ctx: Context) -> None:
    server, sizes = ctx.server, ctx.sizes
    clients = 32
    ctx.log(f"4. hot pool: {clients} clients through 4 members of one pool")
    database = server.name("pool")
    server.create(database, server.schema_template())
    with server.connect(database) as conn:
        execute_script(conn, "pool_setup")
    series = _debit_pair(ctx, database, "pgbench_pool", "pgbench_pool_bare", clients,
                         sizes.pgbench_seconds, {})
    with server.connect(database) as conn:
        row = conn.execute(sql_bytes("pool_check"), {}).fetchone()
        plan_statements(ctx, conn, "pool", {"debit_credits_pool": (
            b"SELECT debit_credits((SELECT id FROM bench_ids WHERE n = 1), 1)")})
    assert row is not None
    overdrawn, problems, remaining = int(row[0]), int(row[1]), int(row[2])
    server.drop(database)
    ctx.facts["pool"] = {"overdrawn_accounts": overdrawn, "integrity_problems": problems,
                         "pool_remaining": remaining}
    ctx.add(Result("pool_c32", "4. hot pool", "team pool debit, 32 clients, one pool row", "tps",
                   "higher", series[0], series[1], 0.80,
                   [*_p99_note(series), f"overdrawn accounts: {overdrawn}; "
                    f"verify_credit_integrity() rows: {problems}"],
                   {"overdrawn_accounts": overdrawn, "integrity_problems": problems}))


# ---------------------------------------------------------------------- 5. Python


def python_wrapper(ctx: Context, database: str) -> None:
    """Workload 5: the wrapper's price over a raw prepared execute, then what sending
    unprepared (``prepare=False``, so a transaction pooler can stand between) costs
    on a direct connection (:func:`python_unprepared`)."""
    server, sizes = ctx.server, ctx.sizes
    calls = sizes.python_calls
    ctx.log(f"5. Python wrapper: {calls} calls per repetition")
    url = server.url(database)
    raw = sql_bytes("python_debit")
    with server.connect(database) as conn:
        ids = [UUID(str(r[0])) for r in conn.execute(b"SELECT id FROM bench_ids").fetchall()]
    rng = random.Random(42)  # noqa: S311 - a reproducible workload, not a secret
    sequence = [rng.choice(ids) for _ in range(calls)]

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.cursor()

        def wrapper(user_id: UUID) -> None:
            credits_db.debit(conn, user_id, 1)

        def bare(user_id: UUID) -> None:
            cursor.execute(raw, {"user_id": user_id, "amount": 1}, prepare=True)
            cursor.fetchone()

        for _ in range(10):  # warm both paths (psycopg prepares after 5 executions)
            wrapper(sequence[0])
            bare(sequence[0])
        series = _interleaved(ctx, sequence, ("credits_db.debit", wrapper),
                              ("psycopg execute(prepare=True)", bare))
    ctx.add(Result("python_sync", "5. Python", "credits_db.debit per call (sync)", "ms/call",
                   "lower", series[0], series[1], 1.10, [INTERLEAVED_NOTE, UNPREPARED_NOTE]))

    async def run_async() -> tuple[Series, Series]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
            acursor = aconn.cursor()

            async def awrapper(user_id: UUID) -> None:
                await aio.debit(aconn, user_id, 1)

            async def abare(user_id: UUID) -> None:
                await acursor.execute(raw, {"user_id": user_id, "amount": 1}, prepare=True)
                await acursor.fetchone()

            for _ in range(10):
                await awrapper(sequence[0])
                await abare(sequence[0])
            return await _interleaved_async(ctx, sequence, ("credits_db.aio.debit", awrapper),
                                            ("AsyncConnection execute(prepare=True)", abare))

    series = asyncio.run(run_async())
    ctx.add(Result("python_async", "5. Python", "credits_db.aio.debit per call (async)", "ms/call",
                   "lower", series[0], series[1], 1.10, [INTERLEAVED_NOTE, UNPREPARED_NOTE]))
    python_unprepared(ctx, url, raw, sequence)


def python_unprepared(ctx: Context, url: str, raw: bytes, sequence: list[UUID]) -> None:
    """The price of ``prepare=False`` alone: the raw debit unprepared vs prepared on
    one connection, sync and async, with ``synchronous_commit = off`` on it (as the
    cost ladder: the statement is measured, not the WAL flush, whose drift is larger
    than this price)."""
    params = {"amount": 1}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(b"SET synchronous_commit = off")
        cursor = conn.cursor()

        def send(prepare: bool) -> Callable[[UUID], None]:
            def call(user_id: UUID) -> None:
                cursor.execute(raw, {**params, "user_id": user_id}, prepare=prepare)
                cursor.fetchone()
            return call

        for prepare in (True, False) * 10:
            send(prepare)(sequence[0])
        series = _interleaved(ctx, sequence, ("psycopg execute(prepare=False)", send(False)),
                              ("psycopg execute(prepare=True)", send(True)))
    ctx.add(Result("python_unprepared", "5. Python",
                   "raw execute, prepare=False vs prepare=True, per call (sync)", "ms/call",
                   "lower", series[0], series[1], None, [INTERLEAVED_NOTE, UNPREPARED_ROW_NOTE],
                   _price_us(series)))

    async def run_async() -> tuple[Series, Series]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
            await aconn.execute(b"SET synchronous_commit = off")
            acursor = aconn.cursor()

            def send(prepare: bool) -> Callable[[UUID], Awaitable[None]]:
                async def call(user_id: UUID) -> None:
                    await acursor.execute(raw, {**params, "user_id": user_id}, prepare=prepare)
                    await acursor.fetchone()
                return call

            for prepare in (True, False) * 10:
                await send(prepare)(sequence[0])
            return await _interleaved_async(
                ctx, sequence, ("AsyncConnection execute(prepare=False)", send(False)),
                ("AsyncConnection execute(prepare=True)", send(True)))

    series = asyncio.run(run_async())
    ctx.add(Result("python_async_unprepared", "5. Python",
                   "raw execute, prepare=False vs prepare=True, per call (async)", "ms/call",
                   "lower", series[0], series[1], None, [INTERLEAVED_NOTE, UNPREPARED_ROW_NOTE],
                   _price_us(series)))


UNPREPARED_NOTE = ("the wrapper sends its statements unprepared (prepare=False) so that a "
                   "transaction pooler (PgBouncer, Supabase port 6543) may stand between; "
                   "B stays the raw prepared execute, so this ratio includes that price")

UNPREPARED_ROW_NOTE = ("what prepare=False alone costs a direct connection: the same raw "
                       "statement, parsed and planned per call vs prepared once; "
                       "synchronous_commit=off on this connection, so the statement is "
                       "measured, not the WAL flush")


def _price_us(series: tuple[Series, Series]) -> JsonDict:
    """A's median minus B's, in microseconds per call (the ``extra`` of a row)."""
    a, b = (statistics.median(one.values) for one in series)
    return {"price_us_per_call": round((a - b) * 1000, 1)}


PYTHON_BLOCK = 50
"""Calls per block: A and B alternate every block, so the commit-latency drift of a
shared disk, which moved whole one-second runs by ±15 %, falls on both alike."""

INTERLEAVED_NOTE = (f"each repetition alternates A and B in blocks of {PYTHON_BLOCK} calls "
                    "(first side swapped every block); the value is the mean per call")


def _blocks(sequence: list[UUID]) -> list[list[UUID]]:
    return [sequence[i:i + PYTHON_BLOCK] for i in range(0, len(sequence), PYTHON_BLOCK)]


def _interleaved(ctx: Context, sequence: list[UUID],
                 *sides: tuple[str, Callable[[UUID], None]]) -> tuple[Series, Series]:
    """Milliseconds per call of each side, the sides alternating block by block."""
    series = (Series(sides[0][0]), Series(sides[1][0]))
    for rep in range(ctx.sizes.short_reps):
        spent = [0.0, 0.0]
        for number, block in enumerate(_blocks(sequence)):
            for side in ((0, 1) if number % 2 == 0 else (1, 0)):
                call = sides[side][1]
                started = time.perf_counter()
                for user_id in block:
                    call(user_id)
                spent[side] += time.perf_counter() - started
        _record(ctx, rep, series, spent, len(sequence))
    return series


async def _interleaved_async(ctx: Context, sequence: list[UUID],
                             *sides: tuple[str, Callable[[UUID], Awaitable[None]]]
                             ) -> tuple[Series, Series]:
    """:func:`_interleaved` for coroutines."""
    series = (Series(sides[0][0]), Series(sides[1][0]))
    for rep in range(ctx.sizes.short_reps):
        spent = [0.0, 0.0]
        for number, block in enumerate(_blocks(sequence)):
            for side in ((0, 1) if number % 2 == 0 else (1, 0)):
                call = sides[side][1]
                started = time.perf_counter()
                for user_id in block:
                    await call(user_id)
                spent[side] += time.perf_counter() - started
        _record(ctx, rep, series, spent, len(sequence))
    return series


def _record(ctx: Context, rep: int, series: tuple[Series, Series], spent: list[float],
            calls: int) -> None:
    for one, seconds in zip(series, spent, strict=True):
        one.samples.append(Sample(seconds / calls * 1000))
        ctx.log(f"    rep {rep + 1}/{ctx.sizes.short_reps} {one.label}: {one.values[-1]:.4g}")


# ---------------------------------------------------------------------- 6. growth


PLAN_LINE = 400
"""Longest line kept whole in a plan file."""


def plan_statements(ctx: Context, conn: Conn, prefix: str, statements: dict[str, bytes]) -> None:
    """Write EXPLAIN (ANALYZE, BUFFERS) of each statement and its nested ones (auto_explain)."""
    messages: list[str] = []
    conn.add_notice_handler(lambda diag: messages.append(diag.message_primary or ""))
    conn.execute(b"LOAD 'auto_explain'")
    for setting in (b"SET auto_explain.log_min_duration = 0",
                    b"SET auto_explain.log_analyze = on", b"SET auto_explain.log_buffers = on",
                    b"SET auto_explain.log_nested_statements = on",
                    b"SET auto_explain.log_timing = on", b"SET client_min_messages = log"):
        conn.execute(setting)
    ctx.plans_dir.mkdir(parents=True, exist_ok=True)
    for name, statement in statements.items():
        messages.clear()
        conn.execute(statement, {})
        plans: dict[str, list[str]] = {}
        for message in messages:
            if "plan:" in message or "Query Text" in message:
                plans.setdefault(_query_text(message), []).append(message)
        # A statement run once per row (the foreign-key check of each inserted
        # balance row) is shown once, with its count.
        text = "\n\n".join(
            found[0] if len(found) == 1 else
            f"(run {len(found)} times; the first shown)\n{found[0]}"
            for found in plans.values())
        # A custom plan shows its array parameters whole (expire_credits() passes
        # the ids of every lot it expires): cut such lines short.
        text = "\n".join(line if len(line) <= PLAN_LINE else
                         f"{line[:PLAN_LINE]} ... ({len(line):,} characters)"
                         for line in text.splitlines())
        path = ctx.plans_dir / f"{name}.txt"
        path.write_text(f"-- {prefix}: {name} (auto_explain, ANALYZE, BUFFERS, nested)\n\n"
                        + text + "\n")
        seq = sorted({line.strip() for line in text.splitlines() if "Seq Scan on" in line})
        ctx.facts.setdefault("plans", {})[name] = {"file": f"plans/{path.name}",
                                                    "seq_scans": seq}
    conn.execute(b"SET client_min_messages = notice")


def _query_text(message: str) -> str:
    """The whole query text of an auto_explain message (up to the plan's root node):
    two statements of one function may share their first line (expire_credits())."""
    lines = message.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Query Text")), None)
    if start is None:
        return message
    end = next((i for i in range(start + 1, len(lines))
                if re.match(r"\S.*\(cost=\d", lines[i])), len(lines))
    return "\n".join(lines[start:end])


def _named_statements(text: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("-- name:"):
            current = line.split(":", 1)[1].strip()
            out[current] = b""
        elif current is not None and line.strip() and not line.startswith("--"):
            out[current] += line.encode() + b"\n"
    return out


def growth(ctx: Context) -> None:
    server, sizes = ctx.server, ctx.sizes
    ctx.log("6. growth")
    per_user: dict[int, list[Series]] = {}
    for users in sizes.growth_users:
        if users in ctx.backfill_series:
            series = ctx.backfill_series[users]
        else:
            ctx.log(f"  backfill {users:,} users")
            series = alternate(sizes.reps, _backfill_sides(ctx, users), ctx.log)
        per_user[users] = [_per_unit(s, users, 1e6) for s in series]
    server.drop(server.name("bf_run"))
    smallest, largest = min(per_user), max(per_user)
    for index, label in ((0, "backfill_user_credits()"), (2, "CLI batched backfill")):
        per_user[largest][index].label = f"{label} at {largest:,} users"
        per_user[smallest][index].label = f"{label} at {smallest:,} users"
        rss = [per_user[u][index].summary()["extra"].get("peak_rss_mb") for u in per_user]
        ctx.add(Result(
            f"growth_backfill_{'fn' if index == 0 else 'cli'}", "6. growth",
            f"{label}: us/user at {largest:,} vs {smallest:,} users", "us/user", "lower",
            per_user[largest][index], per_user[smallest][index], 1.50,
            [f"median us/user by size: "
             f"{ {u: round(statistics.median(s[index].values), 2) for u, s in per_user.items()} }",
             f"baseline us/user by size: "
             f"{ {u: round(statistics.median(s[1].values), 2) for u, s in per_user.items()} }"]
            + ([f"peak RSS MB by size: {dict(zip(per_user, rss, strict=True))}"]
               if index == 2 else []),
            {"per_size": {u: [s.summary() for s in v] for u, v in per_user.items()}}))

    # Debit latency as the users and then the ledger grow. synchronous_commit is
    # off for these runs: with it on, every point measures the WAL flush, which
    # does not grow, and would hide any growth of the statements themselves.
    options = "-c synchronous_commit=off"
    points: dict[str, list[Series]] = {}
    biggest = ""
    for users in sizes.growth_users:
        ctx.log(f"  debit with {users:,} users")
        database = accounts_db(ctx, users, f"grow_{users}")
        label = f"{users:,} users, {users:,} log rows"
        points[label] = [_latency(s) for s in _debit_pair(
            ctx, database, "pgbench_debit", "pgbench_debit_bare", 1, sizes.growth_seconds,
            {"accounts": str(users)}, options=options)]
        if users != max(sizes.growth_users):
            server.drop(database)
        biggest = database
    users = max(sizes.growth_users)
    with server.connect(biggest) as conn:
        for target in sizes.growth_log:
            row = conn.execute(b"SELECT count(*) FROM credit_usage_log").fetchone()
            assert row is not None
            have = int(row[0])
            if target <= have:
                continue
            ctx.log(f"  growing the ledger to {target:,} rows")
            conn.execute(sql_bytes("growth_log"), {"pairs": (target - have) // 2})
            conn.execute(b"VACUUM ANALYZE credit_usage_log")
            row = conn.execute(b"SELECT count(*) FROM credit_usage_log").fetchone()
            assert row is not None
            label = f"{users:,} users, {int(row[0]):,} log rows"
            ctx.log(f"  debit with {label}")
            points[label] = [_latency(s) for s in _debit_pair(
                ctx, biggest, "pgbench_debit", "pgbench_debit_bare", 1, sizes.growth_seconds,
                {"accounts": str(users)}, options=options)]
        plan_statements(ctx, conn, label, _named_statements(sql_text("plans")))
    labels = list(points)
    points[labels[-1]][0].label = f"debit_credits() at {labels[-1]}"
    points[labels[0]][0].label = f"debit_credits() at {labels[0]}"
    ctx.add(Result(
        "growth_debit", "6. growth",
        f"debit_credits() ms/op (1 client): {labels[-1]} vs {labels[0]}", "ms/op", "lower",
        points[labels[-1]][0], points[labels[0]][0], 1.50,
        [f"function ms/op: {_medians(points, 0)}", f"bare ms/op: {_medians(points, 1)}",
         "synchronous_commit=off for these runs (see docs/performance.md)"],
        {"points": {k: [s.summary() for s in v] for k, v in points.items()}}))
    server.drop(biggest)

    # The backfill plan on a fresh copy of the middle size.
    middle = sorted(sizes.growth_users)[len(sizes.growth_users) // 2]
    database = server.name("plan_backfill")
    server.create(database, server.users_template(middle))
    with server.connect(database) as conn:
        plan_statements(ctx, conn, f"{middle:,} users",
                        {"backfill_user_credits": sql_bytes("backfill_function")})
    server.drop(database)


def _medians(points: dict[str, list[Series]], index: int) -> dict[str, float]:
    return {k: round(statistics.median(v[index].values), 4) for k, v in points.items()}


def _per_unit(series: Series, units: int, scale: float) -> Series:
    return Series(series.label, [Sample(s.value / units * scale, dict(s.extra))
                                 for s in series.samples])


def _latency(series: Series) -> Series:
    """tps samples as ms per operation (1 client)."""
    return Series(series.label, [Sample(1000.0 / s.value, dict(s.extra)) for s in series.samples])


# ---------------------------------------------------------------------- 7. lots (issue 16)

LOT_CLIENTS = 8
"""Clients of the lot-debit rows (issue 16 states their target at 8)."""

LOTS_PER_ACCOUNT = 5
"""Lots on each account of the expiry sweep (bench/lots_expiring.sql)."""

EXPIRE_AHEAD = "2 days"
"""The sweep's p_as_of, ahead of now: every bulk lot (expiring within a day) is due by then."""


def lots(ctx: Context) -> None:
    """Workload 7 (issue 16): what lots cost the debits that do not use them, the
    debits that spend them, and the expiry sweep, each next to its bare SQL."""
    _untracked_debit(ctx)
    _lot_debit_one(ctx)
    _lot_debit_span(ctx)
    _expiry(ctx)


def _integrity_problems(ctx: Context, database: str) -> int:
    with ctx.server.connect(database) as conn:
        row = conn.execute(b"SELECT count(*) FROM verify_credit_integrity()").fetchone()
    assert row is not None
    return int(row[0])


def _untracked_debit(ctx: Context) -> None:
    """The package's debit vs revision 0009's (bench_debit_credits_0009) on accounts
    without tracked lots: pgbench at the keyed rows' client counts, then one session."""
    server, sizes = ctx.server, ctx.sizes
    n = sizes.accounts
    ctx.log(f"7. lots: debit without tracked lots vs revision 0009's, {n:,} accounts")
    database = accounts_db(ctx, n, "lots_plain")
    with server.connect(database) as conn:
        # Without parameters: the copied body's RAISE formats keep their bare %.
        for script in ("debit_0009_function", "debit_interleaved"):
            conn.execute(sql_bytes(script))
    before_db = _accounts_at_0009(ctx, n)
    defines = {"accounts": str(n)}

    def side(db: str, script: str, clients: int) -> Callable[[], Sample]:
        def action() -> Sample:
            server.checkpoint()
            return ctx.pgbench.run(server.url(db), script=script, clients=clients,
                                   seconds=sizes.pgbench_seconds, defines=defines)
        return action

    for clients in sizes.keyed_clients:
        ctx.log(f"  {clients} clients")
        package, copy, schema = alternate(sizes.reps, [
            ("pgbench_debit", side(database, "pgbench_debit", clients)),
            ("pgbench_debit_0009", side(database, "pgbench_debit_0009", clients)),
            ("pgbench_debit on a revision-0009 database",
             side(before_db, "pgbench_debit", clients)),
        ], ctx.log)
        ctx.add(Result(f"lots_untracked_c{clients}", "7. lots",
                       f"debit_credits(), account without tracked lots, vs revision 0009's "
                       f"debit_credits(), {clients} clients", "tps", "higher",
                       package, copy, 0.95, [*_p99_note([package, copy]), UNTRACKED_NOTE]))
        ctx.add(Result(f"lots_untracked_schema_c{clients}", "7. lots",
                       f"debit_credits(), account without tracked lots, vs revision 0009 "
                       f"(function and schema), {clients} clients", "tps", "higher",
                       package, schema, 0.95,
                       [*_p99_note([schema]),
                        "B: the same accounts built on a database at revision 0009 (its "
                        "debit_credits(), and its tables: no tracked_credits column and its "
                        "CHECK, no credit_lots), the same script: what lots cost an account "
                        "that never uses them, schema included; the row above compares the "
                        "functions alone on one schema"]))
    ctx.facts["lots_untracked_0009_integrity_problems"] = _integrity_problems(ctx, before_db)
    server.drop(before_db)
    calls = sizes.ladder_calls
    ctx.log(f"  one session: {calls} committed calls per side, alternating every "
            f"{SESSION_BLOCK}")
    package = Series("debit_credits() (one session)")
    before = Series("revision 0009's debit_credits() (one session)")
    with server.connect(database) as conn:
        conn.execute(b"SET synchronous_commit = off")
        for rep in range(sizes.short_reps):
            row = conn.execute(b"CALL bench_debit_interleaved(%s, %s, %s)",
                               (calls, n, SESSION_BLOCK)).fetchone()
            assert row is not None
            package.samples.append(Sample(float(row[0])))
            before.samples.append(Sample(float(row[1])))
            ctx.log(f"    rep {rep + 1}/{sizes.short_reps}: {row[0]:.4g} vs {row[1]:.4g} us")
    step = statistics.median(package.values) - statistics.median(before.values)
    ctx.add(Result("lots_untracked_session", "7. lots",
                   "one session: debit_credits(), account without tracked lots, vs revision "
                   "0009's, per committed call", "us/call", "lower", package, before, 1 / 0.95,
                   [f"{step:+.1f} us per call; {calls} calls per side and repetition, the "
                    f"sides alternating every {SESSION_BLOCK} calls, synchronous_commit=off "
                    "(bench/debit_interleaved.sql; the target is 0.95 of throughput, so "
                    "1/0.95 of time)", UNTRACKED_NOTE]))
    ctx.facts["lots_untracked_integrity_problems"] = _integrity_problems(ctx, database)
    server.drop(database)


def _accounts_at_0009(ctx: Context, users: int) -> str:
    """:func:`accounts_db` on a database migrated to revision 0009 (before lots)."""
    server = ctx.server
    name = server.name("lots_plain_at_0009")
    migrate.upgrade(server.create(name), "0009")
    with server.connect(name) as conn:
        with conn.transaction():
            conn.execute(b"ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
            conn.execute(sql_bytes("seed_users"), {"start": 1, "n": users})
            conn.execute(b"ALTER TABLE users ENABLE TRIGGER users_allocate_credits")
        conn.execute(b"VACUUM ANALYZE users")
        conn.execute(sql_bytes("backfill_function"), {})
        execute_script(conn, "bench_ids")
    return name


SESSION_BLOCK = 50
"""Calls per block of the one-session untracked row (bench/debit_interleaved.sql)."""

UNTRACKED_NOTE = ("B: revision 0009's debit_credits() (before lots), copied from "
                  "alembic/versions/0010_credit_lots_down.sql as bench_debit_credits_0009 "
                  "(bench/debit_0009_function.sql); accounts from the backfill (untracked "
                  "lots only), the same as workload 3's")


def _lots_db(ctx: Context, users: int, suffix: str, grants: str) -> str:
    """A copy of the users template, backfilled, given the lots of bench/<grants>.sql,
    with bench_ids naming each account's first two lots (bench/bench_lot_ids.sql)."""
    server = ctx.server
    name = server.name(suffix)
    server.create(name, server.users_template(users))
    with server.connect(name) as conn:
        conn.execute(sql_bytes("backfill_function"), {})
        conn.execute(sql_bytes(grants), {})
        execute_script(conn, "bench_lot_ids")
    return name


def _add_lot_rows(ctx: Context, prefix: str, what: str, series: list[Series],
                  notes: list[str]) -> None:
    """A vs its bare SQL (the target row), the package's statement vs bare, A vs that."""
    package, bare, statement = series
    ctx.add(Result(prefix, "7. lots", f"{what} vs the bare SQL leaving the same rows, "
                   f"{LOT_CLIENTS} clients", "tps", "higher", package, bare, 0.75,
                   [*_p99_note([package, bare]), *notes]))
    ctx.add(Result(f"{prefix}_statement", "7. lots",
                   f"floor: the package's lot statement sent bare vs the bare SQL, {what}, "
                   f"{LOT_CLIENTS} clients", "tps", "higher", statement, bare, None,
                   [*_p99_note([statement]),
                    "what choosing the lots in spending order costs in SQL "
                    "(take_from_lots()'s statement without the function around it)"]))
    ctx.add(Result(f"{prefix}_vs_statement", "7. lots",
                   f"debit_credits() vs the package's lot statement sent bare, {what}, "
                   f"{LOT_CLIENTS} clients", "tps", "higher", package, statement, None,
                   ["what the PL/pgSQL around the lot statement costs: the permission "
                    "check, the hot path's UPDATE that finds tracked credits, the argument "
                    "check, the tracked-credits probe, the nested SECURITY DEFINER call and "
                    "its row lock before the statement"]))


def _lot_debit_one(ctx: Context) -> None:
    """A debit of 1 from one expiring lot, random accounts (as workload 3)."""
    server, sizes = ctx.server, ctx.sizes
    n = sizes.accounts
    ctx.log(f"7. lots: debit from one expiring lot, {n:,} accounts, {LOT_CLIENTS} clients")
    database = _lots_db(ctx, n, "lots_one", "lots_grant_one")
    series = _debit_pair(ctx, database, "pgbench_debit", "pgbench_lot_one_bare", LOT_CLIENTS,
                         sizes.pgbench_seconds, {"accounts": str(n)},
                         also=("pgbench_lot_one_statement",))
    problems = _integrity_problems(ctx, database)
    ctx.facts["lot_one_integrity_problems"] = problems
    with server.connect(database) as conn:
        plan_statements(ctx, conn, "one expiring lot", {"debit_credits_one_lot": (
            b"SELECT debit_credits((SELECT id FROM bench_ids WHERE n = 1), 1)")})
    server.drop(database)
    _add_lot_rows(ctx, "lot_one", "debit from one expiring lot", series, [
        "accounts: backfilled, plus one lot of 1,000,000 credits expiring in 10 years by "
        "grant_credits() (bench/lots_grant_one.sql); debits of 1 on random accounts",
        "B: bench/pgbench_lot_one_bare.sql (balance with tracked_credits, the lot's "
        "taken, the entry, its take; the lot id read with the account)",
        f"verify_credit_integrity() rows after all runs: {problems}"])


def _lot_state(conn: Conn) -> JsonDict:
    """What a run of lot debits left, to check every side did the same work."""
    row = conn.execute(
        b"SELECT (SELECT count(*) FROM credit_usage_log WHERE type = 'debit'),"
        b" (SELECT -sum(amount) FROM credit_usage_log WHERE type = 'debit'),"
        b" (SELECT count(*) FROM credit_lot_takes), (SELECT sum(taken) FROM credit_lots),"
        b" (SELECT sum(tracked_credits) FROM user_credits),"
        b" (SELECT count(*) FROM verify_credit_integrity())").fetchone()
    assert row is not None
    return {"debits": int(row[0]), "debited": int(row[1] or 0), "takes": int(row[2]),
            "taken": int(row[3] or 0), "tracked": int(row[4] or 0),
            "integrity_problems": int(row[5])}


def _lot_debit_span(ctx: Context) -> None:
    """A debit of 2 that spans two of five lots, each on a fresh account: every
    repetition of every side starts from a fresh copy of the same accounts and
    runs the same fixed number of debits per client."""
    server, sizes = ctx.server, ctx.sizes
    per_client = sizes.span_transactions
    users = LOT_CLIENTS * per_client
    ctx.log(f"7. lots: debit spanning two of five lots, {LOT_CLIENTS} clients x "
            f"{per_client} debits, each on a fresh account")
    template = _lots_db(ctx, users, "lots_span_template", "lots_grant_five")
    with server.connect(template) as conn:
        conn.execute(sql_bytes("debit_lot_span_floor_function"), {})
    run_db = server.name("lots_span")
    pgbench = dataclasses.replace(ctx.pgbench, transactions=per_client)

    def side(script: str) -> Callable[[], Sample]:
        def action() -> Sample:
            server.create(run_db, template)
            server.checkpoint()
            sample = pgbench.run(server.url(run_db), script=script, clients=LOT_CLIENTS,
                                 seconds=sizes.pgbench_seconds,
                                 defines={"k": "0", "clients": str(LOT_CLIENTS)})
            with server.connect(run_db) as conn:
                sample.extra.update(_lot_state(conn))
            return sample
        return action

    scripts = ("pgbench_lot_span", "pgbench_lot_span_bare", "pgbench_lot_span_statement",
               "pgbench_lot_span_floor", "pgbench_lot_span_floor_hot")
    series = alternate(sizes.reps, [(script, side(script)) for script in scripts], ctx.log)
    server.create(run_db, template)
    with server.connect(run_db) as conn:
        plan_statements(ctx, conn, "two of five lots", {"debit_credits_lot_span": (
            b"SELECT debit_credits((SELECT id FROM bench_ids WHERE n = 1), 2)")})
    server.drop(run_db)
    server.drop(template)
    _add_lot_rows(ctx, "lot_span", "debit spanning two of five lots", series[:3], [
        *_same_work(series, ("debits", "debited", "takes", "taken", "tracked",
                             "integrity_problems")),
        f"accounts: backfilled, plus five lots expiring 10 years and 1..5 days ahead by "
        f"grant_credits() (bench/lots_grant_five.sql: 1 credit in the soonest, 10 in each "
        f"other); a debit of 2 takes 1 + 1; {per_client} debits per client, each client "
        f"walking its own accounts, on a fresh copy per repetition",
        "B: bench/pgbench_lot_span_bare.sql (balance with tracked_credits, two lots' "
        "taken, the entry, its two takes; the lot ids read with the account)"])
    _add_lot_span_floors(ctx, package=series[0], bare=series[1], floor=series[3],
                         hot_floor=series[4])


def _add_lot_span_floors(ctx: Context, *, package: Series, bare: Series, floor: Series,
                         hot_floor: Series) -> None:
    """The spanning debit's contract floors vs bare, and debit_credits() vs the nearer."""
    where = f"debit spanning two of five lots, {LOT_CLIENTS} clients"
    source = " (bench/debit_lot_span_floor_function.sql)"
    ctx.add(Result("lot_span_contract_floor", "7. lots",
                   f"contract floor: lock, then one lot statement, in the least function "
                   f"keeping the debit contract vs bare, {where}", "tps", "higher",
                   floor, bare, None,
                   [*_p99_note([floor]),
                    "permission check, SECURITY DEFINER with pinned search_path, jsonb "
                    "result; the balance row locked by a statement of its own, then "
                    "take_from_lots()'s statement" + source]))
    ctx.add(Result("lot_span_contract_floor_hot", "7. lots",
                   f"contract floor with the hot path's UPDATE first vs bare, {where}",
                   "tps", "higher", hot_floor, bare, None,
                   [*_p99_note([hot_floor]),
                    "the floor above, after the untracked account's one statement, which "
                    "finds tracked credits and writes nothing" + source]))
    ctx.add(Result("lot_span_vs_contract_floor", "7. lots",
                   f"debit_credits() vs that floor with the hot path first, {where}",
                   "tps", "higher", package, hot_floor, None,
                   ["what debit_credits() costs beyond the contract: the argument check, "
                    "the tracked-credits probe, the nested SECURITY DEFINER call, the "
                    "lapsed-credit test on the lock, the one-lot statement tried first"]))


def _expire_state(conn: Conn) -> JsonDict:
    """What a sweep left: its entries (with a checksum of their ids, accounts, amounts,
    descriptions and lots), the lots' expired and the balances."""
    row = conn.execute(
        b"SELECT count(*), coalesce(-sum(amount), 0),"
        b" coalesce(sum(hashtext(id || ':' || user_id || ':' || amount || ':' || description"
        b"     || ':' || lot_id)::bigint), 0),"
        b" (SELECT sum(expired) FROM credit_lots), (SELECT sum(used_credits) FROM user_credits),"
        b" (SELECT sum(tracked_credits) FROM user_credits)"
        b" FROM credit_usage_log WHERE type = 'expire'").fetchone()
    assert row is not None
    return {"expire_entries": int(row[0]), "credits_expired": int(row[1]),
            "entries_checksum": int(row[2]), "lots_expired_sum": int(row[3] or 0),
            "used": int(row[4] or 0), "tracked": int(row[5] or 0)}


def _expire_side(ctx: Context, run_db: str, template: str, as_of: object,
                 name: str) -> Callable[[], Sample]:
    """One sweep (bench/<name>.sql) on a fresh copy of ``template``, timed."""
    def action() -> Sample:
        ctx.server.create(run_db, template)
        ctx.server.checkpoint()
        with ctx.server.connect(run_db) as conn:
            start = time.perf_counter()
            cursor = conn.execute(sql_bytes(name), {"as_of": as_of})
            seconds = time.perf_counter() - start
            report = cursor.fetchone() if name == "expire_function" else None
            state = _expire_state(conn)
        if report is not None:
            state["accounts_skipped"] = report[0]["accounts_skipped"]
        return Sample(seconds, state)
    return action


def _expiry(ctx: Context) -> None:
    """expire_credits() over every due lot, one call, vs the bare statement writing
    the same rows; then its time per lot, largest size vs smallest."""
    server, sizes = ctx.server, ctx.sizes
    keys = ("expire_entries", "credits_expired", "entries_checksum", "lots_expired_sum",
            "used", "tracked")
    per_lot: dict[int, list[Series]] = {}
    largest, middle = max(sizes.expire_lots), sorted(sizes.expire_lots)[
        len(sizes.expire_lots) // 2]
    run_db = server.name("expire_run")
    for lots_n in sizes.expire_lots:
        accounts = lots_n // LOTS_PER_ACCOUNT
        ctx.log(f"7. lots: expire_credits() for {lots_n:,} lots on {accounts:,} accounts")
        template = server.name(f"expire_{lots_n}")
        server.create(template, server.users_template(accounts))
        with server.connect(template) as conn:
            conn.execute(sql_bytes("backfill_function"), {})
            conn.execute(sql_bytes("lots_expiring"), {"per_account": LOTS_PER_ACCOUNT})
            conn.execute(b"VACUUM ANALYZE")
            row = conn.execute(b"SELECT (SELECT count(*) FROM verify_credit_integrity()),"
                               b" now() + %s::interval", (EXPIRE_AHEAD,)).fetchone()
        assert row is not None
        setup_problems, as_of = int(row[0]), row[1]

        fn, bare = alternate(sizes.reps, [
            ("expire_credits()", _expire_side(ctx, run_db, template, as_of, "expire_function")),
            ("bare UPDATE lots, INSERT entries, UPDATE balances",
             _expire_side(ctx, run_db, template, as_of, "expire_baseline")),
        ], ctx.log)
        skipped = fn.summary()["extra"].get("accounts_skipped", [])
        problems = None
        if lots_n == min(sizes.expire_lots):
            # The last side that ran was the bare one; then the function once more.
            problems = [_integrity_problems(ctx, run_db)]
            _expire_side(ctx, run_db, template, as_of, "expire_function")()
            problems.append(_integrity_problems(ctx, run_db))
        if lots_n == middle:
            server.create(run_db, template)
            with server.connect(run_db) as conn:
                plan_statements(ctx, conn, f"{lots_n:,} lots", {"expire_credits": (
                    b"SELECT expire_credits(now() + interval '" + EXPIRE_AHEAD.encode()
                    + b"')")})
        server.drop(run_db)
        server.drop(template)
        ctx.facts.setdefault("expire", {})[str(lots_n)] = {
            "setup_integrity_problems": setup_problems, "accounts_skipped": skipped,
            "integrity_problems_after_bare_and_function": problems}
        ctx.add(Result(
            "expire" if lots_n == largest else f"expire_{lots_n}", "7. lots",
            f"expire_credits() for {lots_n:,} lots ({accounts:,} accounts), one call",
            "s", "lower", fn, bare, 1.30 if lots_n == largest else None,
            [*_same_work([fn, bare], keys),
             f"lots set up in bulk as grant_credits() writes them (bench/lots_expiring.sql), "
             f"{LOTS_PER_ACCOUNT} per backfilled account, all due; fresh copy per "
             f"repetition; verify_credit_integrity() rows after setup: {setup_problems}"
             + ("" if problems is None else
                f", after the bare statement and after expire_credits(): {problems}"),
             f"expire_credits() accounts_skipped per run: {skipped}",
             "B: bench/expire_baseline.sql"]))
        per_lot[lots_n] = [_per_unit(fn, lots_n, 1e6), _per_unit(bare, lots_n, 1e6)]
    smallest = min(per_lot)
    big, small = per_lot[largest][0], per_lot[smallest][0]
    big.label = f"expire_credits() at {largest:,} lots"
    small.label = f"expire_credits() at {smallest:,} lots"
    ctx.add(Result(
        "expire_growth", "7. lots",
        f"expire_credits(): us/lot at {largest:,} vs {smallest:,} lots", "us/lot", "lower",
        big, small, 1.50,
        [f"median us/lot by size: "
         f"{ {n: round(statistics.median(s[0].values), 2) for n, s in per_lot.items()} }",
         f"baseline us/lot by size: "
         f"{ {n: round(statistics.median(s[1].values), 2) for n, s in per_lot.items()} }"],
        {"per_size": {n: [s.summary() for s in v] for n, v in per_lot.items()}}))


# ---------------------------------------------------------------------- 8. renewal (issue 16)

RENEW_INTERVAL = "1 month"
"""The members' renewal_interval in the renewal's databases."""

ROLLOVER_CAP = 100
"""The members' rollover_cap: below the 350 of an unspent allowance, above the 50 of some."""

RENEW_AHEAD = "1 month 1 day"
"""The renewal's p_as_of, ahead of the signups: every first period has ended by then, and
the second (which the renewal gives) has not."""


RENEWAL_KEYS = ("expire_entries", "credits_expired", "renewal_entries", "rollover_entries",
                "credits_rolled_over", "entries_checksum", "lots_expired_sum",
                "lots_expired_unspent_sum", "new_lots_checksum", "total", "used", "tracked",
                "periods_checksum")
"""What _renewal_state() reports, the same on every side and repetition."""


def _renewal_state(conn: Conn) -> JsonDict:
    """What a renewal left: its entries (a checksum of their ids, accounts, amounts,
    types, sources, descriptions and lots), the old lots' expired and expired_unspent,
    the new lots (a checksum without their ids, which a join orders), the balances."""
    row = conn.execute(
        b"SELECT count(*) FILTER (WHERE l.type = 'expire'),"
        b" coalesce(-sum(l.amount) FILTER (WHERE l.type = 'expire'), 0),"
        b" count(*) FILTER (WHERE l.source = 'renewal'),"
        b" count(*) FILTER (WHERE l.source = 'rollover'),"
        b" coalesce(sum(l.amount) FILTER (WHERE l.source = 'rollover'), 0),"
        b" coalesce(sum(hashtext(l.id || ':' || l.user_id || ':' || l.amount || ':' || l.type"
        b"     || ':' || l.source || ':' || l.description || ':' || coalesce(l.lot_id, 0)"
        b"     )::bigint), 0),"
        b" (SELECT sum(expired) FROM credit_lots),"
        b" (SELECT sum(expired_unspent) FROM credit_lots),"
        b" (SELECT coalesce(sum(hashtext(k.user_id || ':' || k.log_id || ':' || k.source"
        b"     || ':' || k.amount || ':' || k.expires_at)::bigint), 0)"
        b"  FROM credit_lots k WHERE k.source IN ('renewal', 'rollover')),"
        b" (SELECT sum(total_credits) FROM user_credits),"
        b" (SELECT sum(used_credits) FROM user_credits),"
        b" (SELECT sum(tracked_credits) FROM user_credits),"
        b" (SELECT sum(hashtext(c.user_id || ':' || c.period_ends_at || ':'"
        b"     || c.period_allowance)::bigint) FROM user_credits c)"
        b" FROM credit_usage_log l"
        b" WHERE l.type = 'expire' OR l.source IN ('renewal', 'rollover')").fetchone()
    assert row is not None
    return {key: int(value or 0) for key, value in zip(RENEWAL_KEYS, row, strict=True)}


def renewal_template(server: BenchServer, database: str, accounts: int) -> str:
    """A copy of the schema template where members renew monthly (rollover cap
    ROLLOVER_CAP), with ``accounts`` members signed up in bulk and part of their
    allowance spent in bulk (bench/renewal_users.sql, bench/renewal_spend.sql)."""
    server.create(database, server.schema_template())
    with server.connect(database) as conn:
        conn.execute(b"UPDATE role_credits SET renewal_interval = %s::interval,"
                     b" rollover_cap = %s WHERE role = 'member'", (RENEW_INTERVAL, ROLLOVER_CAP))
        conn.execute(sql_bytes("renewal_users"), {"n": accounts})
        conn.execute(sql_bytes("renewal_spend"), {})
        conn.execute(b"VACUUM ANALYZE")
    return database


def _renew_side(ctx: Context, run_db: str, template: str, as_of: object,
                name: str) -> Callable[[], Sample]:
    """One renewal (bench/<name>.sql) on a fresh copy of ``template``, timed."""
    def action() -> Sample:
        ctx.server.create(run_db, template)
        ctx.server.checkpoint()
        with ctx.server.connect(run_db) as conn:
            start = time.perf_counter()
            cursor = conn.execute(sql_bytes(name), {"as_of": as_of})
            seconds = time.perf_counter() - start
            report = cursor.fetchone() if name == "renew_function" else None
            state = _renewal_state(conn)
        if report is not None:
            state["accounts_skipped"] = report[0]["accounts_skipped"]
            state["accounts_renewed"] = report[0]["accounts_renewed"]
        return Sample(seconds, state)
    return action


def renewal(ctx: Context) -> None:
    """Workload 8 (issue 16): renew_allowances() over every due account, one call, vs
    the bare statement writing the same rows; then its time per account, largest size
    vs smallest."""
    server, sizes = ctx.server, ctx.sizes
    per_account: dict[int, list[Series]] = {}
    largest = max(sizes.renew_accounts)
    middle = sorted(sizes.renew_accounts)[len(sizes.renew_accounts) // 2]
    run_db = server.name("renew_run")
    for accounts in sizes.renew_accounts:
        ctx.log(f"8. renewal: renew_allowances() for {accounts:,} accounts")
        template = renewal_template(server, server.name(f"renew_{accounts}"), accounts)
        with server.connect(template) as conn:
            row = conn.execute(b"SELECT (SELECT count(*) FROM verify_credit_integrity()),"
                               b" now() + %s::interval", (RENEW_AHEAD,)).fetchone()
        assert row is not None
        setup_problems, as_of = int(row[0]), row[1]

        fn, bare = alternate(sizes.reps, [
            ("renew_allowances()", _renew_side(ctx, run_db, template, as_of, "renew_function")),
            ("bare UPDATE lots, INSERT entries and lots, UPDATE balances",
             _renew_side(ctx, run_db, template, as_of, "renew_baseline")),
        ], ctx.log)
        extra = fn.summary()["extra"]
        skipped, renewed = extra.get("accounts_skipped", []), extra.get("accounts_renewed", [])
        problems = None
        if accounts == min(sizes.renew_accounts):
            # The last side that ran was the bare one; then the function once more.
            problems = [_integrity_problems(ctx, run_db)]
            _renew_side(ctx, run_db, template, as_of, "renew_function")()
            problems.append(_integrity_problems(ctx, run_db))
        if accounts == middle:
            server.create(run_db, template)
            with server.connect(run_db) as conn:
                plan_statements(ctx, conn, f"{accounts:,} accounts", {"renew_allowances": (
                    b"SELECT renew_allowances(now() + interval '" + RENEW_AHEAD.encode()
                    + b"')")})
        server.drop(run_db)
        server.drop(template)
        ctx.facts.setdefault("renewal", {})[str(accounts)] = {
            "setup_integrity_problems": setup_problems, "accounts_skipped": skipped,
            "accounts_renewed": renewed,
            "integrity_problems_after_bare_and_function": problems}
        ctx.add(Result(
            "renew" if accounts == largest else f"renew_{accounts}", "8. renewal",
            f"renew_allowances() for {accounts:,} accounts, one call", "s", "lower", fn, bare,
            1.30 if accounts == largest else None,
            [*_same_work([fn, bare], RENEWAL_KEYS),
             f"members renewing every {RENEW_INTERVAL} with a rollover cap of {ROLLOVER_CAP}, "
             f"signed up in bulk through the signup trigger (bench/renewal_users.sql), by "
             f"turns nothing, 100, all but 50 and all of the allowance spent in bulk as "
             f"debit_credits() writes it (bench/renewal_spend.sql); p_as_of {RENEW_AHEAD} "
             f"after the signups; fresh copy per repetition; verify_credit_integrity() rows "
             f"after setup: {setup_problems}"
             + ("" if problems is None else
                f", after the bare statement and after renew_allowances(): {problems}"),
             f"renew_allowances() accounts_renewed per run: {renewed}, accounts_skipped: "
             f"{skipped}",
             "B: bench/renew_baseline.sql (the new period's end as created_at + 2 months)"]))
        per_account[accounts] = [_per_unit(fn, accounts, 1e6), _per_unit(bare, accounts, 1e6)]
    smallest = min(per_account)
    big, small = per_account[largest][0], per_account[smallest][0]
    big.label = f"renew_allowances() at {largest:,} accounts"
    small.label = f"renew_allowances() at {smallest:,} accounts"
    ctx.add(Result(
        "renew_growth", "8. renewal",
        f"renew_allowances(): us/account at {largest:,} vs {smallest:,} accounts",
        "us/account", "lower", big, small, 1.50,
        [f"median us/account by size: "
         f"{ {n: round(statistics.median(s[0].values), 2) for n, s in per_account.items()} }",
         f"baseline us/account by size: "
         f"{ {n: round(statistics.median(s[1].values), 2) for n, s in per_account.items()} }"],
        {"per_size": {n: [s.summary() for s in v] for n, v in per_account.items()}}))
