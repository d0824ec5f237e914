"""Issue 13, "how to prove it": every ordered pair of writers, interleaved.

The writers: single and bulk signup, backfill_user_credits(), the batched walk,
own, pool and keyed debits, keyed and unkeyed grants, refund, role change, team
add and remove, user delete and a user re-created with the same id; and the
lots' (revision 0010): a grant with an expiry, one with a priority, debits
spending tracked lots of the own account and of a pool, a refund onto a lapsed
lot, and expire_credits() (now, with p_limit, and as of two days ahead), each
paired with the writers sharing its rows or scanning every user; and the
renewals' (revision 0011): renew_allowances() (now, with p_limit, two days
ahead), an operator starting a role's renewals, a signup, role change and
grant entering that role, a role change mid-period, a debit and a refund of a
lapsed allowance, paired the same way. For each
ordered pair, session 2 starts while session 1 holds its locks (observed in
pg_blocking_pids, never slept into), in both commit orders that can happen, at
READ COMMITTED, REPEATABLE READ and SERIALIZABLE. After each interleaving the
world's ledger is checked by the test's own SQL (tests/support/interleavings.py)
and only documented SQLSTATEs may have been raised.

One database serves the whole matrix; each interleaving builds its own world
of fresh users and deletes it afterwards. Run with -s to see the numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.databases import Database, Server
from tests.support.interleavings import LEVELS, Sessions, open_sessions, run_matrix


@pytest.fixture(scope="module")
def matrix_db(server: Server, installed_template: Database) -> Iterator[Database]:
    """One database (credits-db at head) for every interleaving of this module."""
    database = server.create(template=installed_template.name)
    yield database
    server.drop(database)


@pytest.fixture(scope="module")
def sessions(matrix_db: Database) -> Iterator[Sessions]:
    """The two writing sessions and the monitor, kept open across the matrix."""
    with open_sessions(matrix_db.url) as opened:
        yield opened


@pytest.mark.parametrize("level", list(LEVELS))
def test_every_ordered_pair_of_writers(sessions: Sessions, level: str) -> None:
    """No interleaving of two writers breaks an invariant or raises an undocumented SQLSTATE."""
    tally = run_matrix(sessions, level)
    print(tally.summary(level))
    if tally.failures:
        pytest.fail(tally.summary(level) + "\n" + "\n".join(tally.failures), pytrace=False)
