"""Child process for the CLI's batched backfill: ``python -m bench._backfill_child URL BATCH``.

Runs :func:`credits_db.backfill_all` (what ``credits-db backfill
--batch-size`` runs) on an autocommit connection and prints one JSON line with
the seconds the backfill took (interpreter start-up excluded). The parent reads
this process's peak RSS from ``os.wait4``.
"""

from __future__ import annotations

import json
import sys
import time

import psycopg

import credits_db


def main(argv: list[str]) -> int:
    url, batch_size = argv[0], int(argv[1])
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        start = time.perf_counter()
        summary = credits_db.backfill_all(conn, batch_size=batch_size)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "users": summary.users_backfilled,
                      "credits": summary.credits_allocated}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
