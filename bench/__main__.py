"""``python -m bench [--url URL] [--quick] [--out DIR] [--only W,...] [--renew-accounts N,...]
[--expire-lots N,...] [--apply-sql FILE ...]``: run the workloads, write the results."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from pathlib import Path

from bench import report, workloads
from bench.core import FULL, HERE, QUICK, WORKLOADS
from bench.pgb import Pgbench
from bench.server import find_pgbench, provide


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure every credits-db hot path next to its bare-SQL baseline.")
    parser.add_argument("--url", help="a server URL whose user may CREATE DATABASE "
                        "(default: a throwaway embedded PostgreSQL)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (about a minute): for CI, so the bench cannot rot")
    parser.add_argument("--out", type=Path, default=None,
                        help="where results.md, results.json and plans/ go (default: bench/)")
    parser.add_argument("--only", type=_workloads, default=WORKLOADS,
                        help="run only these workloads, comma-separated, of "
                        f"{','.join(WORKLOADS)} (python needs debit); needs --out, so that "
                        "a partial table never replaces bench/results.md")
    parser.add_argument("--renew-accounts", type=_sizes, default=None, metavar="N,...",
                        help="workload 8's sizes instead of the mode's (e.g. 1000000: the "
                        "largest alone); needs --out")
    parser.add_argument("--expire-lots", type=_sizes, default=None, metavar="N,...",
                        help="workload 7's expiry sizes instead of the mode's; needs --out")
    parser.add_argument("--apply-sql", type=Path, action="append", default=[],
                        metavar="FILE", help="run FILE (e.g. a candidate CREATE OR REPLACE "
                        "FUNCTION) on the schema template after the migration, so that every "
                        "A side measures it; repeatable; needs --out")
    args = parser.parse_args(argv)
    if args.only != WORKLOADS and args.out is None:
        parser.error("--only needs --out")
    for option, value in (("--renew-accounts", args.renew_accounts),
                          ("--expire-lots", args.expire_lots),
                          ("--apply-sql", args.apply_sql)):
        if value and args.out is None:
            parser.error(f"{option} needs --out")
    for path in args.apply_sql:
        if not path.is_file():
            parser.error(f"--apply-sql {path}: no such file")
    if "python" in args.only and "debit" not in args.only:
        parser.error("--only python needs debit too (it debits workload 3's accounts)")
    if args.out is None:
        args.out = HERE
    return args


def _workloads(text: str) -> tuple[str, ...]:
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(WORKLOADS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(sorted(unknown)) or '(none)'}; "
            f"choose from {', '.join(WORKLOADS)}")
    return tuple(name for name in WORKLOADS if name in names)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"not a list of positive sizes: {text!r}")
    return tuple(sorted(set(sizes)))


def main(argv: list[str] | None = None) -> int:
    """Entry point (also for ``credits-db bench``); returns the exit status."""
    args = parse(argv)
    sizes = QUICK if args.quick else FULL
    if args.renew_accounts:
        sizes = dataclasses.replace(sizes, renew_accounts=args.renew_accounts)
    if args.expire_lots:
        sizes = dataclasses.replace(sizes, expire_lots=args.expire_lots)
    started = time.perf_counter()
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    with provide(args.url) as server:
        server.apply_sql = [path.read_text() for path in args.apply_sql]
        major, _version = server.version()
        pgbench = Pgbench(find_pgbench(major), transactions=50 if args.quick else None)
        log(f"server PostgreSQL {major}, pgbench {pgbench.binary}, mode {sizes.mode}")
        ctx = workloads.Context(server, sizes, pgbench, args.out / "plans", log)
        machine = server.machine()
        only = args.only
        if "backfill" in only:
            workloads.backfill(ctx)
        if "signup" in only:
            workloads.signup(ctx)
        if "debit" in only:
            debit_db = workloads.debit(ctx)
            if "python" in only:
                workloads.python_wrapper(ctx, debit_db)
            server.drop(debit_db)
        if "pool" in only:
            workloads.hot_pool(ctx)
        if "growth" in only:
            workloads.growth(ctx)
        if "lots" in only:
            workloads.lots(ctx)
        if "renewal" in only:
            workloads.renewal(ctx)
    meta = {
        "mode": sizes.mode,
        "started": stamp,
        "seconds": time.perf_counter() - started,
        "server": "embedded" if args.url is None else "--url",
        "workloads": list(only),
        "apply_sql": [str(path) for path in args.apply_sql],
        "pgbench": str(pgbench.binary),
        "reps": sizes.reps,
        "sizes": sizes.__dict__,
        "machine": machine,
        "facts": ctx.facts,
    }
    json_path, md_path = report.write(args.out, ctx.results, meta)
    log(f"wrote {json_path} and {md_path}")
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
