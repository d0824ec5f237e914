"""The interleaving matrix of tests/sql/test_ledger_interleavings.py (no tests here).

Every ordered pair of writers runs in two sessions of one database: session 1
runs its writer and keeps its transaction open, session 2 runs its writer in a
background thread, and the main thread asks the server (``pg_blocking_pids``)
whether session 2 waits for session 1, polling until it does or until session 2
has finished: the order of the sessions is observed, never slept into. Then
both commit orders that can happen: session 1 first (always), and session 2
first (only when session 2 was not blocked, since a blocked session cannot
commit). Each interleaving runs in its own world of fresh users (World),
committed before it starts and deleted after its checks, all in the test's own
SQL (not the package's functions):

* invariants: every balance equals the sums of its account's own entries,
  nothing is negative, every account holds its current role's allocation, a
  key names one entry per owner, pools stay within their cap, a refund
  reverses one debit of the same account life once; and
  ``verify_credit_integrity()`` reports nothing for the world;
* lots (revision 0010): each lot's taken + expired within 0..amount, its taken
  what the debits not refunded took, its expired the sum of its expiry entries
  (at most one more entry than refunds onto it: nothing expires twice),
  tracked_credits what the tracked lots hold, every credit a lot or a refund;
  no debit took from a lot past its expiry at the debit's time, and a refund
  onto a lapsed lot expired those credits at once;
* effects: each committed writer left its write (a role change to super_admin
  at least 10000 allocated), a rolled-back one nothing; a committed sweep
  expired at most its p_limit lots and, unless it skipped a busy account,
  left nothing due; nothing expired before its expiry but by a sweep ahead of time;
* renewal (revision 0011): every account of a renewing role has a period on
  its grid and, while it lasts, at least the role's credits as its allowance;
  at most one renewal per account and period (a missed period gives one
  allowance), its rollover exactly least(rollover_cap, what was unspent) and
  only into the next period; a committed renewal that skipped no account
  left nothing due, a limited one renewed at most p_limit; at REPEATABLE READ
  and SERIALIZABLE the operator's start of a role's renewals never commits
  (CR014, revision 0012);
* every SQLSTATE raised is a documented one (retryable ones at any level).

The lot writers (grants with an expiry or a priority, debits of tracked lots
from the own account and a pool, a refund onto a lapsed lot, and
expire_credits() now, with a p_limit and two days ahead) are paired with the
writers whose rows they share, and with the writers that scan every user
(``interleaved``); their world also has L, B and N (see World). So are the
renewal writers (``renewal=True``): renew_allowances() now, with p_limit 1 and
two days ahead; the operator starting LATER's renewals (schedule); a signup, a
role change and a grant opening an account in LATER (sched_*); a role change
mid-period of renewing accounts, a debit of a lapsed allowance and a refund
onto it. Their world adds G, H, J, K, Y, V and T (see _renewal_setup), whose
time passes by moving their openings, period ends and allowance lots back in
the setup: the server's clock never moves.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import IsolationLevel
from psycopg.rows import dict_row

from tests.support.helpers import Conn

# The schema of revision 0007 (account lives, allocated_credits, the keys
# table). Set to False only to run the matrix against an older schema: the
# watermark becomes 0, allocated_credits and the keys table are not checked.
NEW_SCHEMA = True

LEVELS: dict[str, IsolationLevel] = {
    "read_committed": IsolationLevel.READ_COMMITTED,
    "repeatable_read": IsolationLevel.REPEATABLE_READ,
    "serializable": IsolationLevel.SERIALIZABLE,
}

# SQLSTATEs the README documents for credits-db's functions, and the retryable
# ones (nothing written, the caller retries), allowed at every level.
DOCUMENTED = frozenset(
    {f"CR{n:03d}" for n in range(1, 11)} | {"CR014", "22023", "22P02", "22004", "42501"}
)
RETRYABLE = frozenset({"40001", "40P01", "55P03", "57014"})
ALLOWED = DOCUMENTED | RETRYABLE

BULK_USERS = 100
BULK_ROLES = ("member", "admin", "team_admin", "RecruitPro", "super_admin", None, "no such role")
ALLOCATION_SOURCES = "('signup', 'backfill', 'role_change')"
MEMBER_CREDITS = 350
SUPER_ADMIN_CREDITS = 10000
# Session 2 not blocked nor finished after this long is a hang, reported as such.
HANG_SECONDS = 30.0
POLL_SECONDS = 0.0005


def _world_prefix() -> bytes:
    """8 random bytes shared by every id of one world (a v4 uuid's first half)."""
    return uuid.uuid4().bytes[:8]


@dataclass(frozen=True)
class World:
    """One interleaving's users, all with new random ids.

    A team_admin (5000) with members M (own account spent to 0, so M's debits go
    to the pool), F1 and F2 (fillers: the pool has 3 of its 4 seats taken); U a
    member with 350 and one debit D of 50; W a member with no balance row; X and
    X2 members in no team; R and R2 ids that had an account (a debit keyed
    'order-1') and were deleted. S and the 100 bulk ids (and the second
    targets S2 and bulk 2) are ids of users only a signup writer inserts.

    Lots (revision 0010): L, a member with 350 untracked, holds tracked lots Q
    (30, priority 5, lapsed), P (50, priority 10, no expiry), Z (40, lapsed) and
    E (100, expiring in a day); debit D2 of 50 took Q's 30 and 20 of P before Q
    lapsed. B, a second team admin (5000 untracked) with member N (own account
    spent to 0), holds 100 at priority 0, 200 expiring in a day and 60 lapsed.
    A lot lapses by its expiry being backdated (as the owner) in the setup, so
    nothing of the world's expiries changes after ``setup_log``, the last
    entry the setup wrote.

    Every id starts with the world's random prefix, so the world is one range
    of ids (``lo`` to ``hi``): the checks scope to it by an index range scan.
    """

    prefix: bytes = field(default_factory=_world_prefix)
    d: int = 0
    d2: int = 0
    setup_log: int = 0
    with_lots: bool = False
    dg: int = 0
    with_renewal: bool = False

    def id(self, n: int) -> uuid.UUID:
        """The world's n-th id: its prefix, then n (the second half, variant bits set)."""
        return uuid.UUID(bytes=self.prefix + (0x8000_0000_0000_0000 | n).to_bytes(8, "big"))

    @property
    def lo(self) -> uuid.UUID:
        """The lowest id the world's prefix allows."""
        return uuid.UUID(bytes=self.prefix + bytes(8))

    @property
    def hi(self) -> uuid.UUID:
        """The highest id the world's prefix allows."""
        return uuid.UUID(bytes=self.prefix + b"\xff" * 8)

    @property
    def a(self) -> uuid.UUID:
        """The team admin (5000)."""
        return self.id(1)

    @property
    def m(self) -> uuid.UUID:
        """Member of A's team, own account at 0."""
        return self.id(2)

    @property
    def f1(self) -> uuid.UUID:
        """Filler member of A's team."""
        return self.id(3)

    @property
    def f2(self) -> uuid.UUID:
        """Filler member of A's team."""
        return self.id(4)

    @property
    def u(self) -> uuid.UUID:
        """A member with 300 left after debit D."""
        return self.id(5)

    @property
    def w(self) -> uuid.UUID:
        """A member without a balance row."""
        return self.id(6)

    @property
    def x(self) -> uuid.UUID:
        """A member in no team."""
        return self.id(7)

    @property
    def x2(self) -> uuid.UUID:
        """A member in no team (second target of team add)."""
        return self.id(8)

    @property
    def r(self) -> uuid.UUID:
        """A deleted user with history (to re-create)."""
        return self.id(9)

    @property
    def r2(self) -> uuid.UUID:
        """Second target of re-create."""
        return self.id(10)

    @property
    def s(self) -> uuid.UUID:
        """The single signup's new user."""
        return self.id(11)

    @property
    def s2(self) -> uuid.UUID:
        """Second target of single signup."""
        return self.id(12)

    @property
    def lots(self) -> uuid.UUID:
        """A member holding tracked lots (see build_world): some lapsed, one spent."""
        return self.id(13)

    @property
    def b(self) -> uuid.UUID:
        """A second team admin (5000) whose pool holds tracked lots."""
        return self.id(14)

    @property
    def n(self) -> uuid.UUID:
        """Member of B's team, own account spent to 0 (N's debits go to B's lots)."""
        return self.id(15)

    @property
    def g(self) -> uuid.UUID:
        """A renew_monthly account whose period ended an hour ago, 200 of it unspent."""
        return self.id(16)

    @property
    def h(self) -> uuid.UUID:
        """A renew_monthly account whose renewal was missed for a whole period."""
        return self.id(17)

    @property
    def j(self) -> uuid.UUID:
        """A renew_monthly account whose period ends in a day (due for future_renew only)."""
        return self.id(18)

    @property
    def k(self) -> uuid.UUID:
        """A renew_later account (one-time until the schedule writer), opened 45 days ago."""
        return self.id(19)

    @property
    def y(self) -> uuid.UUID:
        """A member (350) that sched_role_change moves into renew_later."""
        return self.id(20)

    @property
    def v(self) -> uuid.UUID:
        """A renew_later user without a balance row (sched_grant or a backfill opens it)."""
        return self.id(21)

    @property
    def s3(self) -> uuid.UUID:
        """sched_signup's new renew_later user."""
        return self.id(22)

    @property
    def s4(self) -> uuid.UUID:
        """Second target of sched_signup."""
        return self.id(23)

    @property
    def t(self) -> uuid.UUID:
        """A renew_monthly account in the middle of its period (period_role_change raises it)."""
        return self.id(24)

    def bulk(self, target: int) -> list[uuid.UUID]:
        """The 100 ids of a bulk signup (target 1 or 2)."""
        return [self.id(1000 * target + n) for n in range(BULK_USERS)]

    def scope(self) -> dict[str, uuid.UUID]:
        """The query parameters naming the world's range of ids."""
        return {"lo": self.lo, "hi": self.hi}


def build_world(conn: Conn, *, lots: bool = False, renewal: bool = False) -> World:
    """Create and commit a fresh world on the autocommit connection ``conn``;
    with ``lots``, L, B and N and their lots too (only pairs with a lot writer
    need them); with ``renewal``, the renewal world (G, H, J, K, Y, V, T: see
    _renewal_setup)."""
    world = World()
    signed_up = [world.a, world.m, world.f1, world.f2, world.u, world.x, world.x2, world.r, world.r2]
    roles = ["team_admin", *["member"] * 8]
    if lots:
        signed_up += [world.lots, world.b, world.n]
        roles += ["member", "team_admin", "member"]
    if renewal:
        ensure_renewal_roles(conn)
        signed_up += [world.g, world.h, world.j, world.k, world.y, world.t]
        roles += [RENEWING, RENEWING, RENEWING, LATER, "member", RENEWING]
    with conn.transaction():
        conn.execute(
            "INSERT INTO users (id, role) SELECT * FROM unnest(%s::uuid[], %s::text[])",
            (signed_up, roles),
        )
        conn.execute(
            "SELECT add_team_member(%s, m) FROM unnest(%s::uuid[]) AS m",
            (world.a, [world.m, world.f1, world.f2]),
        )
        conn.execute("SELECT debit_credits(%s, 350)", (world.m,))
        row = conn.execute("SELECT (debit_credits(%s, 50) ->> 'log_id')::bigint", (world.u,))
        d = _one(row.fetchone())
        conn.execute(
            "SELECT debit_credits(r, 10, p_idempotency_key => 'order-1')"
            " FROM unnest(%s::uuid[]) AS r",
            ([world.r, world.r2],),
        )
        # W as the host had it before credits-db: no trigger, so no balance row.
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("INSERT INTO users (id, role) VALUES (%s, 'member')", (world.w,))
        if renewal:
            conn.execute("INSERT INTO users (id, role) VALUES (%s, %s)", (world.v, LATER))
        conn.execute("SET LOCAL session_replication_role = origin")
        conn.execute("DELETE FROM users WHERE id = ANY(%s)", ([world.r, world.r2],))
        d2, setup_log = _lots_setup(conn, world) if lots else (0, 0)
        dg = _renewal_setup(conn, world) if renewal else 0
        if renewal:
            setup_log = _one(conn.execute("SELECT max(id) FROM credit_usage_log").fetchone())
    return replace(world, d=d, d2=d2, setup_log=setup_log, with_lots=lots, dg=dg,
                   with_renewal=renewal)


# The renewal world's roles (revision 0011): RENEWING renews every 30 days,
# PLUS too with more credits, LATER is one-time until the schedule writer
# gives it an interval (reset after each interleaving: reset_renewal_roles).
RENEWING, PLUS, LATER = "renew_monthly", "renew_plus", "renew_later"
RENEWING_CREDITS, PLUS_CREDITS, LATER_CREDITS = 300, 800, 200
ROLLOVER_CAP = 100
PERIOD = "30 days"
ALLOWANCE_SOURCES = "('signup', 'backfill', 'role_change', 'renewal', 'rollover')"


def ensure_renewal_roles(conn: Conn) -> None:
    """The renewal world's roles, once per database (nothing happens if they exist)."""
    conn.execute(
        "INSERT INTO role_credits (role, credits, renewal_interval, rollover_cap)"
        " VALUES (%s, %s, %s::interval, %s), (%s, %s, %s::interval, %s), (%s, %s, NULL, %s)"
        " ON CONFLICT (role) DO NOTHING",
        (RENEWING, RENEWING_CREDITS, PERIOD, ROLLOVER_CAP, PLUS, PLUS_CREDITS, PERIOD,
         ROLLOVER_CAP, LATER, LATER_CREDITS, ROLLOVER_CAP))


def reset_renewal_roles(conn: Conn) -> None:
    """LATER renews no more (a committed schedule writer gave it an interval)."""
    conn.execute("UPDATE role_credits SET renewal_interval = NULL"
                 " WHERE role = %s AND renewal_interval IS NOT NULL", (LATER,))


def _renewal_setup(conn: Conn, world: World) -> int:
    """Time passes for the renewal world without the server's clock moving: each
    account's opening (the periods' anchor), period end and allowance lot are moved
    back together, as the owner, in the setup's transaction. G spent 100 of its 300
    (debit DG) before its period ended an hour ago; H's period ended 31 days ago (a
    whole period missed, so no rollover); J's ends in a day; K opened 45 days ago
    (its period once LATER renews: days 30 to 60); T's and Y's began now. Returns DG's
    log id."""
    dg: int = _one(conn.execute("SELECT (debit_credits(%s, 100) ->> 'log_id')::bigint",
                                (world.g,)).fetchone())
    # (user, how far back its opening moves): G 30 days + 1 hour, H 61 days, J 29 days.
    back = [(world.g, "30 days 1 hour"), (world.h, "61 days"), (world.j, "29 days"),
            (world.k, "45 days")]
    users, shifts = [b[0] for b in back], [b[1] for b in back]
    conn.execute(
        "WITH s AS (SELECT * FROM unnest(%s::uuid[], %s::interval[]) AS s(user_id, back)),"
        " lots AS (UPDATE credit_lots l SET expires_at = l.expires_at - s.back FROM s"
        "          WHERE l.user_id = s.user_id AND l.expires_at IS NOT NULL)"
        " UPDATE user_credits uc SET created_at = uc.created_at - s.back,"
        "        period_ends_at = uc.period_ends_at - s.back"
        " FROM s WHERE uc.user_id = s.user_id",
        (users, shifts))
    return dg


def _lots_setup(conn: Conn, world: World) -> tuple[int, int]:
    """L's and B's lots (see World), in the setup's transaction: the grants in
    this order (lot ids follow it), B's team, N's spend, D2, then the lapses.
    Returns (D2's log id, the last log id of the setup)."""
    in_a_day = "now() + interval '1 day'"
    grants = conn.execute(
        "SELECT array_agg((grant_credits(g.u, g.n, 'setup_lot', p_expires_at => g.e,"
        " p_priority => g.p) ->> 'log_id')::bigint ORDER BY g.k)"
        f" FROM (VALUES (1, %(l)s::uuid, 30, {in_a_day}, 5), (2, %(l)s, 50, NULL, 10),"
        f" (3, %(l)s, 40, {in_a_day}, NULL), (4, %(l)s, 100, {in_a_day}, NULL),"
        f" (5, %(b)s, 100, NULL, 0), (6, %(b)s, 200, {in_a_day}, NULL),"
        f" (7, %(b)s, 60, {in_a_day}, NULL)) AS g(k, u, n, e, p)",
        {"l": world.lots, "b": world.b}).fetchone()
    log_ids: list[int] = _one(grants)
    conn.execute("SELECT add_team_member(%s, %s), debit_credits(%s, 350)",
                 (world.b, world.n, world.n))
    d2 = _one(conn.execute("SELECT (debit_credits(%s, 50) ->> 'log_id')::bigint",
                           (world.lots,)).fetchone())
    # Lapsed now: Q, Z and B's 60. Debits judge by statement_timestamp(), so
    # every later statement sees these past their expiry.
    conn.execute("UPDATE credit_lots SET expires_at = now() - interval '1 second'"
                 " WHERE user_id = ANY(%s) AND log_id = ANY(%s)",
                 ([world.lots, world.b], [log_ids[0], log_ids[2], log_ids[6]]))
    return d2, _one(conn.execute("SELECT max(id) FROM credit_usage_log").fetchone())


def drop_world(conn: Conn, world: World) -> None:
    """Delete the world's users (their log rows stay: the log is append-only)."""
    conn.execute("DELETE FROM users WHERE id BETWEEN %(lo)s AND %(hi)s", world.scope())


def _one(row: tuple[Any, ...] | None) -> Any:
    assert row is not None
    return row[0]


# --- writers ---------------------------------------------------------------

WriterFn = Callable[[Conn, World, int], Any]


@dataclass(frozen=True)
class Writer:
    """One kind of write. ``run(conn, world, target)``: target 2 is the second
    target of writers that make no sense twice on the same rows (two signups of
    one id would be the host's unique violation, not a credits-db race)."""

    name: str
    run: WriterFn
    # The world's users whose rows the writer locks or writes (a sweep: the
    # accounts with lots it may expire); only for the pairs of lot writers.
    touches: frozenset[str] = frozenset()
    # A writer of revision 0010's lots (grants with expiry or priority, debits
    # of tracked lots, a refund onto a lapsed lot, the sweeps).
    lots: bool = False
    # A writer of revision 0011's renewals (renew_allowances, the operator
    # starting a role's renewals, the openers of accounts in that role, a role
    # change, debit and refund of a renewing account).
    renewal: bool = False


def _signup(conn: Conn, world: World, target: int) -> None:
    conn.execute("INSERT INTO users (id, role) VALUES (%s, 'member')",
                 (world.s if target == 1 else world.s2,))


def _bulk_signup(conn: Conn, world: World, target: int) -> None:
    conn.execute(
        "INSERT INTO users (id, role) SELECT t.id, (%s::text[])[1 + t.n %% %s]"
        " FROM unnest(%s::uuid[]) WITH ORDINALITY AS t(id, n)",
        (list(BULK_ROLES), len(BULK_ROLES), world.bulk(target)),
    )


def _backfill(conn: Conn, world: World, target: int) -> None:
    conn.execute("SELECT backfill_user_credits()")


def _batched_walk(conn: Conn, world: World, target: int) -> None:
    conn.execute("SELECT backfill_user_credits_batch(NULL, 100000)")
    conn.execute("SELECT backfill_user_credits()")


def _own_debit(conn: Conn, world: World, target: int) -> None:
    conn.execute("SELECT debit_credits(%s, 200)", (world.u,))


def _pool_debit(conn: Conn, world: World, target: int) -> None:
    conn.execute("SELECT debit_credits(%s, 3000)", (world.m,))


def _keyed_debit(conn: Conn, world: World, target: int) -> None:
    conn.execute("SELECT debit_credits(%s, 100, p_idempotency_key => 'K1')", (world.m,))


def _keyed_grant(conn: Conn, world: World, target: int) -> None:
    conn.execute("SELECT grant_credits(%s, 25, p_idempotency_key => 'G1')", (world.u,))


def _grant(conn: Conn, world: World, target: int) -> None:
    conn.execute("SELECT grant_credits(%s, 25)", (world.w,))


def _refund(conn: Conn, world: World, target: int) -> None:
    conn.execute("SELECT refund_credits(%s)", (world.d,))


def _role_change(conn: Conn, world: World, target: int) -> None:
    conn.execute("UPDATE users SET role = 'super_admin' WHERE id = %s", (world.w,))


def _team_add(conn: Conn, world: World, target: int) -> None:
    conn.execute("SELECT add_team_member(%s, %s)", (world.a, world.x if target == 1 else world.x2))


def _team_remove(conn: Conn, world: World, target: int) -> None:
    conn.execute("SELECT remove_team_member(%s, %s)", (world.a, world.m))


def _expiring_grant(conn: Conn, world: World, target: int) -> None:
    conn.execute("SELECT grant_credits(%s, 40, 'promo_exp',"
                 " p_expires_at => now() + interval '1 day')", (world.u,))


def _priority_grant(conn: Conn, world: World, target: int) -> None:
    conn.execute("SELECT grant_credits(%s, 30, 'promo_prio', p_priority => 10)", (world.m,))


def _lots_debit(conn: Conn, world: World, target: int) -> None:
    # P's 30, E's 100 and 20 untracked, never the lapsed Q or Z.
    conn.execute("SELECT debit_credits(%s, 150)", (world.lots,))


def _lots_pool_debit(conn: Conn, world: World, target: int) -> None:
    # B's 100 at priority 0, its 200 expiring, 100 untracked; not the lapsed 60.
    conn.execute("SELECT debit_credits(%s, 400)", (world.n,))


def _lapsed_refund(conn: Conn, world: World, target: int) -> None:
    # D2's 30 go back to Q, lapsed: they expire at once; its 20 to P.
    conn.execute("SELECT refund_credits(%s)", (world.d2,))


SWEEP_LIMIT = 1


def _sweep(conn: Conn, world: World, target: int) -> Any:
    return _one(conn.execute("SELECT expire_credits()").fetchone())


def _limited_sweep(conn: Conn, world: World, target: int) -> Any:
    return _one(conn.execute("SELECT expire_credits(p_limit => %s)", (SWEEP_LIMIT,)).fetchone())


def _future_sweep(conn: Conn, world: World, target: int) -> Any:
    # Two days ahead: the lots expiring in a day expire early too.
    return _one(conn.execute("SELECT expire_credits(now() + interval '2 days')").fetchone())


RENEW_LIMIT = 1


def _renew(conn: Conn, world: World, target: int) -> Any:
    # G (its rollover) and H (a missed period: one allowance, no rollover).
    return _one(conn.execute("SELECT renew_allowances()").fetchone())


def _limited_renew(conn: Conn, world: World, target: int) -> Any:
    return _one(conn.execute("SELECT renew_allowances(p_limit => %s)",
                             (RENEW_LIMIT,)).fetchone())


def _future_renew(conn: Conn, world: World, target: int) -> Any:
    # Two days ahead: J, whose period ends in a day, renews too (its allowance expires early).
    return _one(conn.execute("SELECT renew_allowances(now() + interval '2 days')").fetchone())


def _schedule(conn: Conn, world: World, target: int) -> None:
    # The operator: LATER starts renewing, so K (and whoever enters LATER) gets a period.
    conn.execute("UPDATE role_credits SET renewal_interval = %s::interval WHERE role = %s",
                 (PERIOD, LATER))


def _sched_signup(conn: Conn, world: World, target: int) -> None:
    conn.execute("INSERT INTO users (id, role) VALUES (%s, %s)",
                 (world.s3 if target == 1 else world.s4, LATER))


def _sched_role_change(conn: Conn, world: World, target: int) -> None:
    conn.execute("UPDATE users SET role = %s WHERE id = %s", (LATER, world.y))


def _sched_grant(conn: Conn, world: World, target: int) -> None:
    # Opens V's account (in LATER) with its allocation, then the grant.
    conn.execute("SELECT grant_credits(%s, 25, 'sched_grant')", (world.v,))


def _period_role_change(conn: Conn, world: World, target: int) -> None:
    # Mid-period (T): the period's allowance rises to PLUS's 800, a role_change lot
    # of 500 expiring with it. G's period has ended: nothing now, its renewal
    # (PLUS's 800) is due; after G's renewal, a top-up of that period.
    conn.execute("UPDATE users SET role = %s WHERE id = ANY(%s)", (PLUS, [world.t, world.g]))


def _period_debit(conn: Conn, world: World, target: int) -> None:
    # G's allowance has lapsed (200 in it): CR001 until G is renewed, then from the renewal.
    conn.execute("SELECT debit_credits(%s, 50)", (world.g,))


def _period_refund(conn: Conn, world: World, target: int) -> None:
    # DG's 100 back to G's lapsed allowance: they expire at once, and never roll over.
    conn.execute("SELECT refund_credits(%s)", (world.dg,))


def deleted_by_user_delete(world: World) -> list[uuid.UUID]:
    """Whom the user delete deletes: W (backfill, grant, role change), U (own
    debit, keyed grant, refund, expiring grant), X (team add), M (pool and keyed
    debits, team remove, priority grant), L (lots debit, lapsed refund) and B
    (pool of the lots pool debit) if the world has them, G (renewals, period
    writers) and K (schedule) if it has those, in one statement."""
    return [world.w, world.u, world.x, world.m, *([world.lots, world.b] if world.with_lots else []),
            *([world.g, world.k] if world.with_renewal else [])]


def _user_delete(conn: Conn, world: World, target: int) -> None:
    conn.execute("DELETE FROM users WHERE id = ANY(%s)", (deleted_by_user_delete(world),))


def _recreate(conn: Conn, world: World, target: int) -> None:
    conn.execute("INSERT INTO users (id, role) VALUES (%s, 'member')",
                 (world.r if target == 1 else world.r2,))


def _set(*names: str) -> frozenset[str]:
    return frozenset(names)


WRITERS: tuple[Writer, ...] = (
    Writer("signup", _signup, _set("s")),
    Writer("bulk_signup", _bulk_signup, _set("bulk")),
    Writer("backfill", _backfill, _set("w")),
    Writer("batched_walk", _batched_walk, _set("w")),
    Writer("own_debit", _own_debit, _set("u")),
    Writer("pool_debit", _pool_debit, _set("m", "a")),
    Writer("keyed_debit", _keyed_debit, _set("m", "a")),
    Writer("keyed_grant", _keyed_grant, _set("u")),
    Writer("grant", _grant, _set("w")),
    Writer("refund", _refund, _set("u")),
    Writer("role_change", _role_change, _set("w")),
    Writer("team_add", _team_add, _set("a", "x")),
    Writer("team_remove", _team_remove, _set("a", "m")),
    Writer("user_delete", _user_delete, _set("w", "u", "x", "m", "l", "b", "g", "k")),
    Writer("recreate", _recreate, _set("r")),
    Writer("expiring_grant", _expiring_grant, _set("u"), lots=True),
    Writer("priority_grant", _priority_grant, _set("m"), lots=True),
    Writer("lots_debit", _lots_debit, _set("l"), lots=True),
    Writer("lots_pool_debit", _lots_pool_debit, _set("n", "b"), lots=True),
    Writer("lapsed_refund", _lapsed_refund, _set("l"), lots=True),
    # In a renewal world the sweeps expire G's and H's lapsed allowances too (J's ahead).
    Writer("sweep", _sweep, _set("l", "b", "g", "h"), lots=True),
    Writer("limited_sweep", _limited_sweep, _set("l", "b", "g", "h"), lots=True),
    # U's expiring grant (if it ran) expires within the two days too.
    Writer("future_sweep", _future_sweep, _set("l", "b", "u", "g", "h", "j"), lots=True),
    # Revision 0011. "periods": the renewals and the operator read and write every
    # account's period (the operator locks users and user_credits whole).
    Writer("renew", _renew, _set("g", "h", "periods"), renewal=True),
    Writer("limited_renew", _limited_renew, _set("g", "h", "periods"), renewal=True),
    Writer("future_renew", _future_renew, _set("g", "h", "j", "periods"), renewal=True),
    Writer("schedule", _schedule, _set("k", "y", "v", "s3", "periods"), renewal=True),
    Writer("sched_signup", _sched_signup, _set("s3"), renewal=True),
    Writer("sched_role_change", _sched_role_change, _set("y"), renewal=True),
    Writer("sched_grant", _sched_grant, _set("v"), renewal=True),
    Writer("period_role_change", _period_role_change, _set("t", "g"), renewal=True),
    Writer("period_debit", _period_debit, _set("g"), renewal=True),
    Writer("period_refund", _period_refund, _set("g"), renewal=True),
)
SWEEPS = frozenset({"sweep", "limited_sweep", "future_sweep"})
RENEWALS = frozenset({"renew", "limited_renew", "future_renew"})
# Writers ahead of time: what they expire may not have reached its expiry yet.
AHEAD = frozenset({"future_sweep", "future_renew"})
TWO_TARGETS = frozenset({"signup", "bulk_signup", "team_add", "recreate", "sched_signup"})


# --- running one interleaving ----------------------------------------------


@dataclass
class Outcome:
    """What one session did: the error it raised (SQLSTATE, message), if any."""

    writer: str
    target: int
    sqlstate: str | None = None
    message: str = ""
    result: Any = None

    @property
    def committed(self) -> bool:
        """True when the writer ran and its transaction committed."""
        return self.sqlstate is None


def _record(conn: Conn, outcome: Outcome, exc: psycopg.Error) -> None:
    outcome.sqlstate = exc.sqlstate or f"(none: {type(exc).__name__})"
    outcome.message = str(exc).splitlines()[0] if str(exc) else ""
    conn.rollback()


def _write(conn: Conn, writer: Writer, world: World, outcome: Outcome) -> None:
    try:
        outcome.result = writer.run(conn, world, outcome.target)
    except psycopg.Error as exc:
        _record(conn, outcome, exc)


def _commit(conn: Conn, outcome: Outcome) -> None:
    if outcome.sqlstate is not None:
        return
    try:
        conn.commit()
    except psycopg.Error as exc:
        _record(conn, outcome, exc)


class Background:
    """Runs one call in a thread; ``done`` is set when it has returned or raised."""

    def __init__(self, work: Callable[[], None]) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._work = work
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # re-raised by the main thread
            self.error = exc
        finally:
            self.done.set()


def wait_blocked_or_done(monitor: Conn, blocker: int, waiter: int, work: Background) -> bool:
    """Poll the server until ``waiter`` waits for a lock ``blocker`` holds (True)
    or ``work`` has finished (False). Raises TimeoutError after HANG_SECONDS."""
    deadline = time.monotonic() + HANG_SECONDS
    while not work.done.is_set():
        row = monitor.execute("SELECT %s = ANY(pg_blocking_pids(%s))", (blocker, waiter))
        if _one(row.fetchone()):
            return True
        if time.monotonic() > deadline:
            raise TimeoutError("session 2 neither blocked by session 1 nor finished")
        work.done.wait(POLL_SECONDS)
    return False


def _finish(work: Background, conn: Conn) -> None:
    """Join session 2's thread; a hang is cancelled and reported."""
    work.thread.join(HANG_SECONDS)
    if work.thread.is_alive():
        conn.cancel_safe()
        work.thread.join()
        raise TimeoutError("session 2 did not finish after session 1 committed")
    if work.error is not None:
        raise work.error


@dataclass(frozen=True)
class Pair:
    """An ordered pair of writers at one isolation level."""

    first: Writer
    second: Writer
    level: str

    def targets(self) -> tuple[int, int]:
        """Session 2 takes the second target when both run one two-target writer."""
        same = self.first is self.second and self.first.name in TWO_TARGETS
        return 1, 2 if same else 1


@dataclass
class Run:
    """One interleaving's result."""

    pair: Pair
    order: str
    blocked: bool
    outcomes: tuple[Outcome, Outcome]
    world: World

    def label(self) -> str:
        """The pair, level and commit order, for failure messages."""
        return (f"[{self.pair.level}] {self.pair.first.name} (session 1) -> "
                f"{self.pair.second.name} (session 2), {self.order}")


@dataclass
class Sessions:
    """The two writing sessions and the monitor (autocommit) of one database."""

    one: Conn
    two: Conn
    monitor: Conn

    def set_level(self, level: IsolationLevel) -> None:
        """Both writing sessions run their next transactions at ``level``."""
        for conn in (self.one, self.two):
            conn.rollback()
            conn.isolation_level = level


def run_interleaving(sessions: Sessions, pair: Pair, second_first: bool) -> Run:
    """Run ``pair`` once in a new world. Commit order: session 1 first, or, if
    ``second_first`` and session 2 was not blocked, session 2 first."""
    world = build_world(sessions.monitor, lots=pair.first.lots or pair.second.lots,
                        renewal=pair.first.renewal or pair.second.renewal)
    t1, t2 = pair.targets()
    one, two = Outcome(pair.first.name, t1), Outcome(pair.second.name, t2)
    _write(sessions.one, pair.first, world, one)
    work = Background(lambda: _write(sessions.two, pair.second, world, two))
    try:
        blocked = wait_blocked_or_done(
            sessions.monitor, sessions.one.info.backend_pid, sessions.two.info.backend_pid, work
        )
        if second_first and not blocked:
            _finish(work, sessions.two)
            _commit(sessions.two, two)
            _commit(sessions.one, one)
            order = "commit 2 then 1"
        else:
            _commit(sessions.one, one)
            _finish(work, sessions.two)
            _commit(sessions.two, two)
            order = "commit 1 then 2" + (" (2 blocked by 1)" if blocked else "")
    finally:
        sessions.one.rollback()  # releases session 2 if anything above failed
        work.done.wait()
        sessions.two.rollback()
    return Run(pair, order, blocked, (one, two), world)


# --- invariants, in the test's own SQL -------------------------------------
#
# Every query is scoped to the world's range of ids (%(lo)s .. %(hi)s). An
# account's own entries are its user id's log rows above its watermark.

WATERMARK = "uc.opened_after_log_id" if NEW_SCHEMA else "0"
IN_WORLD = "BETWEEN %(lo)s AND %(hi)s"

LEDGER_SQL = f"""
SELECT uc.user_id, uc.total_credits, uc.used_credits, uc.remaining_credits,
       {"uc.allocated_credits" if NEW_SCHEMA else "NULL::integer"} AS allocated,
       s.total, s.credits, s.debits, s.allocations
FROM user_credits uc
CROSS JOIN LATERAL (
    SELECT coalesce(sum(l.amount), 0) AS total,
           coalesce(sum(l.amount) FILTER (WHERE l.amount > 0), 0) AS credits,
           coalesce(-sum(l.amount) FILTER (WHERE l.amount < 0), 0) AS debits,
           coalesce(sum(l.amount) FILTER (WHERE l.type = 'credit'
                                          AND l.source IN {ALLOCATION_SOURCES}), 0) AS allocations
    FROM credit_usage_log l
    WHERE l.user_id = uc.user_id AND l.id > {WATERMARK}
) s
WHERE uc.user_id {IN_WORLD}
  AND (uc.remaining_credits <> s.total OR uc.total_credits <> s.credits
       OR uc.used_credits <> s.debits
       OR uc.total_credits < 0 OR uc.used_credits < 0 OR uc.remaining_credits < 0
       {"OR uc.allocated_credits <> s.allocations" if NEW_SCHEMA else ""})
"""

# Entitlement (item 6): an account holds at least its current role's
# allocation (a NULL or unknown role: the member row's). For a role that
# renews (0011) the entitlement is per period: PERIOD_SQL.
ENTITLEMENT_SQL = f"""
SELECT uc.user_id, u.role, {"uc.allocated_credits" if NEW_SCHEMA else "NULL::integer"},
       a.allocations, coalesce(rc.credits, fallback.credits, 0) AS entitled
FROM user_credits uc
JOIN users u ON u.id = uc.user_id
LEFT JOIN role_credits rc ON rc.role = u.role
LEFT JOIN role_credits fallback ON fallback.role = 'member'
{"JOIN role_credits r ON r.role = coalesce(rc.role, 'member') AND r.renewal_interval IS NULL"
 if NEW_SCHEMA else ""}
CROSS JOIN LATERAL (
    SELECT coalesce(sum(l.amount), 0) AS allocations
    FROM credit_usage_log l
    WHERE l.user_id = uc.user_id AND l.id > {WATERMARK}
      AND l.type = 'credit' AND l.source IN {ALLOCATION_SOURCES}
) a
WHERE uc.user_id {IN_WORLD}
  AND (a.allocations < coalesce(rc.credits, fallback.credits, 0)
       {"OR uc.allocated_credits < coalesce(rc.credits, fallback.credits, 0)" if NEW_SCHEMA else ""})
"""

# Among the live accounts' own entries, a key names one entry per owner (the
# spender for a debit, the account for a credit) and kind of entry.
KEY_ONCE_SQL = f"""
SELECT coalesce(l.actor_user_id, l.user_id) AS owner, l.type, l.idempotency_key,
       array_agg(l.id ORDER BY l.id)
FROM user_credits uc
JOIN credit_usage_log l ON l.user_id = uc.user_id AND l.id > {WATERMARK}
WHERE uc.user_id {IN_WORLD} AND l.idempotency_key IS NOT NULL
GROUP BY 1, 2, 3
HAVING count(*) > 1
"""

# Each key row of a world owner names an entry with that key by that owner, of
# that kind; the owner exists; a key never survives from an earlier life of the
# owner's own account.
KEY_ROWS_SQL = f"""
SELECT k.owner_user_id, k.operation, k.idempotency_key, k.log_id
FROM credit_idempotency_keys k
LEFT JOIN credit_usage_log l ON l.id = k.log_id
LEFT JOIN user_credits own ON own.user_id = k.owner_user_id
WHERE k.owner_user_id {IN_WORLD}
  AND (l.id IS NULL
       OR l.idempotency_key IS DISTINCT FROM k.idempotency_key
       OR coalesce(l.actor_user_id, l.user_id) <> k.owner_user_id
       OR (l.type = 'debit') <> (k.operation = 'debit')
       OR NOT EXISTS (SELECT FROM users u WHERE u.id = k.owner_user_id)
       OR (l.user_id = k.owner_user_id AND l.id <= own.opened_after_log_id))
"""

# Every keyed entry of a live account whose owner is alive holds its key: an
# entry without it would be written again by a retry.
KEYED_ENTRY_WITHOUT_KEY_SQL = f"""
SELECT l.id, coalesce(l.actor_user_id, l.user_id), l.type, l.idempotency_key
FROM user_credits uc
JOIN credit_usage_log l ON l.user_id = uc.user_id AND l.id > uc.opened_after_log_id
WHERE uc.user_id {IN_WORLD} AND l.idempotency_key IS NOT NULL
  AND EXISTS (SELECT FROM users u WHERE u.id = coalesce(l.actor_user_id, l.user_id))
  AND NOT EXISTS (
      SELECT FROM credit_idempotency_keys k
      WHERE k.owner_user_id = coalesce(l.actor_user_id, l.user_id)
        AND k.operation = CASE WHEN l.type = 'debit' THEN 'debit' ELSE 'grant' END
        AND k.idempotency_key = l.idempotency_key AND k.log_id = l.id)
"""

POOL_CAP_SQL = f"""
SELECT t.team_admin_id, count(*), coalesce(rc.team_member_limit, fallback.team_member_limit, 0)
FROM team_credit_sharing t
JOIN users u ON u.id = t.team_admin_id
LEFT JOIN role_credits rc ON rc.role = u.role
LEFT JOIN role_credits fallback ON fallback.role = 'member'
WHERE t.team_admin_id {IN_WORLD}
GROUP BY t.team_admin_id, 3
HAVING count(*) > coalesce(rc.team_member_limit, fallback.team_member_limit, 0)
"""

# Every refund among a live account's own entries reverses an earlier debit of
# that same account life, for its amount, and no debit is refunded twice.
REFUND_SQL = f"""
SELECT r.id, r.user_id, r.refund_of, d.user_id, d.type, d.amount, r.amount,
       (SELECT count(*) FROM credit_usage_log x WHERE x.refund_of = r.refund_of)
FROM user_credits uc
JOIN credit_usage_log r ON r.user_id = uc.user_id AND r.id > {WATERMARK}
LEFT JOIN credit_usage_log d ON d.id = r.refund_of
WHERE uc.user_id {IN_WORLD} AND (r.refund_of IS NOT NULL OR r.source = 'refund')
  AND (d.id IS NULL OR d.type <> 'debit' OR d.user_id <> r.user_id OR d.id <= {WATERMARK}
       OR d.id >= r.id OR r.amount <> -d.amount OR r.type <> 'credit' OR r.source <> 'refund'
       OR (SELECT count(*) FROM credit_usage_log x WHERE x.refund_of = r.refund_of) > 1)
"""

VERIFY_SQL = f"SELECT user_id, problem FROM verify_credit_integrity() WHERE user_id {IN_WORLD}"

# --- lots (revision 0010) ---
#
# Each lot holds amount - taken - expired, never less than nothing; an
# untracked lot (no expiry, priority 50) is never touched, its credits being
# the account's remaining_credits less tracked_credits.
LOT_SQL = f"""
SELECT l.id, l.user_id, l.amount, l.taken, l.expired, l.tracked
FROM credit_lots l
WHERE l.user_id {IN_WORLD}
  AND (l.taken < 0 OR l.expired < 0 OR l.taken + l.expired > l.amount
       OR (NOT l.tracked AND (l.taken <> 0 OR l.expired <> 0)))
"""

# tracked_credits is what the tracked lots hold, lapsed or not; the untracked
# rest fits in the untracked lots; and every credit of the account life is a
# lot or a refund (which goes back to lots or to the untracked credits).
TRACKED_SQL = f"""
SELECT uc.user_id, uc.tracked_credits, s.held, uc.remaining_credits, s.untracked,
       uc.total_credits, s.lots, r.refunded
FROM user_credits uc
CROSS JOIN LATERAL (
    SELECT coalesce(sum(l.amount - l.taken - l.expired) FILTER (WHERE l.tracked), 0) AS held,
           coalesce(sum(l.amount) FILTER (WHERE NOT l.tracked), 0) AS untracked,
           coalesce(sum(l.amount), 0) AS lots
    FROM credit_lots l WHERE l.user_id = uc.user_id
) s
CROSS JOIN LATERAL (
    SELECT coalesce(sum(e.amount), 0) AS refunded
    FROM credit_usage_log e
    WHERE e.user_id = uc.user_id AND e.id > {WATERMARK} AND e.refund_of IS NOT NULL
) r
WHERE uc.user_id {IN_WORLD}
  AND (uc.tracked_credits <> s.held OR uc.remaining_credits - uc.tracked_credits > s.untracked
       OR uc.remaining_credits < uc.tracked_credits OR uc.total_credits <> s.lots + r.refunded)
"""

# A lot's taken is what the debits not refunded took from it (their takes);
# every take is a debit's of the lot's own account, and a debit's takes are
# at most its amount.
TAKEN_SQL = f"""
SELECT l.id, l.taken, t.credits, t.bad
FROM credit_lots l
CROSS JOIN LATERAL (
    SELECT coalesce(sum(t.amount) FILTER (WHERE r.id IS NULL), 0) AS credits,
           count(*) FILTER (WHERE d.id IS NULL OR d.type <> 'debit' OR d.user_id <> l.user_id
                            OR t.amount <= 0
                            OR (SELECT sum(x.amount) FROM credit_lot_takes x
                                WHERE x.log_id = t.log_id) > -d.amount) AS bad
    FROM credit_lot_takes t
    LEFT JOIN credit_usage_log d ON d.id = t.log_id
    LEFT JOIN credit_usage_log r ON r.refund_of = t.log_id
    WHERE t.lot_id = l.id
) t
WHERE l.user_id {IN_WORLD} AND (l.taken <> t.credits OR t.bad > 0)
"""

# No debit took from a lot past its expiry. A debit judges by its statement's
# start, statement_timestamp(), which is at or after its transaction's start,
# now(), the entry's created_at: a lot lapsed at created_at was lapsed for the
# debit. Sound only while expiries stay as they were when the debit ran: the
# world's change only in its setup (backdated), so only later debits count.
# (A lot whose expiry falls between a debit's transaction start and its
# statement would escape this check: the world has none, its expiries being
# past before the setup committed or a day away.)
LAPSED_TAKE_SQL = f"""
SELECT t.log_id, t.lot_id, t.amount, l.expires_at, d.created_at
FROM credit_lots l
JOIN credit_lot_takes t ON t.lot_id = l.id
JOIN credit_usage_log d ON d.id = t.log_id
WHERE l.user_id {IN_WORLD} AND d.id > %(setup_log)s AND l.expires_at <= d.created_at
"""

# A refund giving credits back to a lot lapsed at the refund's start (as
# above, created_at at or before the statement that judged it) wrote their
# expiry at once, in its transaction, after the refund entry.
REFUND_ONTO_LAPSED_SQL = f"""
SELECT r.id, t.lot_id, t.amount, l.expires_at, r.created_at
FROM user_credits uc
JOIN credit_usage_log r ON r.user_id = uc.user_id AND r.id > %(setup_log)s
                       AND r.id > {WATERMARK} AND r.refund_of IS NOT NULL
JOIN credit_lot_takes t ON t.log_id = r.refund_of
JOIN credit_lots l ON l.id = t.lot_id
WHERE uc.user_id {IN_WORLD} AND l.expires_at <= r.created_at
  AND NOT EXISTS (
      SELECT FROM credit_usage_log e
      WHERE e.user_id = r.user_id AND e.lot_id = l.id AND e.type = 'expire'
        AND e.amount = -t.amount AND e.id > r.id AND e.created_at = r.created_at)
"""

# A lot's expired is the sum of its expiry entries, which are its own
# account's: nothing expires twice. Each lapse of a lot is swept once (after
# the sweep it holds nothing, and a refund onto a lapsed lot expires at once),
# so a lot has at most one expiry entry more than refunds gave credits back to it.
EXPIRED_SQL = f"""
SELECT l.id, l.expired, x.credits, x.entries, g.refunds
FROM credit_lots l
CROSS JOIN LATERAL (
    SELECT coalesce(-sum(e.amount), 0) AS credits, count(*) AS entries
    FROM credit_usage_log e WHERE e.user_id = l.user_id AND e.lot_id = l.id
) x
CROSS JOIN LATERAL (
    SELECT count(*) AS refunds
    FROM credit_lot_takes t JOIN credit_usage_log r ON r.refund_of = t.log_id
    WHERE t.lot_id = l.id
) g
WHERE l.user_id {IN_WORLD} AND (l.expired <> x.credits OR x.entries > 1 + g.refunds)
"""

# Every expiry entry of a live account names one of its lots; no other entry names a lot.
EXPIRY_ENTRY_SQL = f"""
SELECT e.id, e.user_id, e.type, e.amount, e.lot_id
FROM user_credits uc
JOIN credit_usage_log e ON e.user_id = uc.user_id AND e.id > {WATERMARK}
WHERE uc.user_id {IN_WORLD}
  AND (e.type = 'expire' OR e.lot_id IS NOT NULL)
  AND (e.type <> 'expire' OR e.amount >= 0 OR e.source <> 'expiry'
       OR NOT EXISTS (SELECT FROM credit_lots l WHERE l.id = e.lot_id AND l.user_id = e.user_id))
"""

CHECKS: tuple[tuple[str, str], ...] = (
    ("balance <> its own entries, or negative", LEDGER_SQL),
    ("below the entitlement of the current role", ENTITLEMENT_SQL),
    ("a key used more than once", KEY_ONCE_SQL),
    ("team pool over its cap", POOL_CAP_SQL),
    ("bad or repeated refund", REFUND_SQL),
    ("verify_credit_integrity()", VERIFY_SQL),
) + ((
    ("key row naming no entry of its owner, or outliving them", KEY_ROWS_SQL),
    ("keyed entry without its key", KEYED_ENTRY_WITHOUT_KEY_SQL),
) if NEW_SCHEMA else ())


LOT_CHECKS: tuple[tuple[str, str], ...] = (
    ("lot taken + expired outside 0..amount, or untracked lot touched", LOT_SQL),
    ("tracked_credits <> tracked lots, or credits outside the lots", TRACKED_SQL),
    ("lot taken <> its takes, or a bad take", TAKEN_SQL),
    ("a debit took from a lapsed lot", LAPSED_TAKE_SQL),
    ("a refund onto a lapsed lot did not expire it at once", REFUND_ONTO_LAPSED_SQL),
    ("lot expired <> its expiry entries, or expired twice", EXPIRED_SQL),
    ("bad expiry entry", EXPIRY_ENTRY_SQL),
)
# The lot checks in one round trip: (check number, offending row as text).
LOT_CHECKS_SQL = "\nUNION ALL\n".join(
    f"SELECT {n}, x::text FROM ({query}) AS x" for n, (_, query) in enumerate(LOT_CHECKS))


# --- renewal (revision 0011) ---
#
# The role that renews an account: its user's, the member row for a NULL or
# unknown one (a pool is its admin's account, so its admin's role).
RENEWING_ROLE = """
JOIN users u ON u.id = uc.user_id
LEFT JOIN role_credits rc ON rc.role = u.role
JOIN role_credits r ON r.role = coalesce(rc.role, 'member')
"""

# Every account of a renewing role has a period, on its grid (anchor + k x
# interval, k >= 1) and, while it lasts, an allowance of at least the role's
# credits: a role change raises it, never lowers it; an account entering the
# role, or whose role starts renewing, is scheduled. (A period that has ended
# waits for its renewal, which gives the role's credits.)
PERIOD_SQL = f"""
SELECT uc.user_id, u.role, uc.created_at, uc.period_ends_at, uc.period_allowance, r.credits
FROM user_credits uc
{RENEWING_ROLE}
LEFT JOIN LATERAL credits_internal.allowance_period(
    uc.created_at, r.renewal_interval, uc.period_ends_at - interval '1 microsecond') p ON true
WHERE uc.user_id {IN_WORLD} AND r.renewal_interval IS NOT NULL
  AND (uc.period_ends_at IS NULL OR uc.period_allowance IS NULL
       OR p.ends_at <> uc.period_ends_at OR uc.period_ends_at <= uc.created_at
       OR (uc.period_ends_at > now() AND uc.period_allowance < r.credits))
"""

# Renewed at most once per account and period: no world account lives
# through two periods' ends, so at most one renewal lot each (a missed
# period gives one allowance, not one per period), expiring with the
# account's current period; at most one rollover lot, with a renewal.
RENEWED_ONCE_SQL = f"""
SELECT uc.user_id, uc.period_ends_at, x.renewals, x.rollovers, x.stale
FROM user_credits uc
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE l.source = 'renewal') AS renewals,
           count(*) FILTER (WHERE l.source = 'rollover') AS rollovers,
           count(*) FILTER (WHERE l.source IN ('renewal', 'rollover')
                            AND l.expires_at IS DISTINCT FROM uc.period_ends_at) AS stale
    FROM credit_lots l WHERE l.user_id = uc.user_id
) x
WHERE uc.user_id {IN_WORLD}
  AND (x.renewals > 1 OR x.rollovers > x.renewals OR x.stale > 0)
"""

# Each renewal's rollover (0 when there is no rollover lot) is least(the
# role's rollover_cap, what the ended period's allowance lots had unspent at
# its end: amount - taken - expired + expired_unspent, which no later refund
# or sweep changes), and only into the period right after the ended one (a
# missed period: none). The ended period is the latest allowance lots'
# expiry before the renewal's.
ROLLOVER_SQL = f"""
SELECT n.id, n.user_id, e.ended, n.expires_at, r.rollover_cap, p.unspent, o.rolled
FROM credit_lots n
JOIN user_credits uc ON uc.user_id = n.user_id
{RENEWING_ROLE}
CROSS JOIN LATERAL (
    SELECT max(l.expires_at) AS ended FROM credit_lots l
    WHERE l.user_id = n.user_id AND l.source IN {ALLOWANCE_SOURCES} AND l.expires_at < n.expires_at
) e
CROSS JOIN LATERAL (
    SELECT coalesce(sum(l.amount - l.taken - l.expired + l.expired_unspent), 0) AS unspent
    FROM credit_lots l
    WHERE l.user_id = n.user_id AND l.source IN {ALLOWANCE_SOURCES} AND l.expires_at = e.ended
) p
CROSS JOIN LATERAL (
    SELECT coalesce(sum(l.amount), 0) AS rolled FROM credit_lots l
    WHERE l.user_id = n.user_id AND l.source = 'rollover' AND l.expires_at = n.expires_at
) o
WHERE n.user_id {IN_WORLD} AND n.source = 'renewal'
  AND o.rolled <> CASE WHEN e.ended AT TIME ZONE 'UTC'
                            = n.expires_at AT TIME ZONE 'UTC' - r.renewal_interval
                       THEN least(r.rollover_cap, p.unspent) ELSE 0 END
"""

RENEWAL_CHECKS: tuple[tuple[str, str], ...] = (
    ("account of a renewing role without a period on its grid, or below its allowance",
     PERIOD_SQL),
    ("renewed twice, or a renewal not of the current period", RENEWED_ONCE_SQL),
    ("rollover not least(rollover_cap, unspent) into the next period", ROLLOVER_SQL),
)
RENEWAL_CHECKS_SQL = "\nUNION ALL\n".join(
    f"SELECT {n}, x::text FROM ({query}) AS x" for n, (_, query) in enumerate(RENEWAL_CHECKS))


def invariant_problems(conn: Conn, world: World) -> list[str]:
    """Every broken invariant of ``world``, one line each."""
    problems: list[str] = []
    params = {**world.scope(), "setup_log": world.setup_log}
    for name, query in CHECKS:
        problems += [f"{name}: {row}" for row in conn.execute(query, params).fetchall()]
    problems += [f"{LOT_CHECKS[n][0]}: {row}"
                 for n, row in conn.execute(LOT_CHECKS_SQL, params).fetchall()]
    if world.with_renewal:
        problems += [f"{RENEWAL_CHECKS[n][0]}: {row}"
                     for n, row in conn.execute(RENEWAL_CHECKS_SQL, params).fetchall()]
    return problems


def sqlstate_problems(run: Run) -> list[str]:
    """Every SQLSTATE raised that the docs do not name."""
    return [
        f"session {n} ({o.writer}) raised undocumented SQLSTATE {o.sqlstate}: {o.message}"
        for n, o in enumerate(run.outcomes, start=1)
        if o.sqlstate is not None and o.sqlstate not in ALLOWED
    ]


# --- effects: what each committed writer left, and nothing from a rolled-back one

Facts = dict[str, Any]

FACTS_SQL = f"""
WITH own AS MATERIALIZED (
    SELECT l.* FROM user_credits uc
    JOIN credit_usage_log l ON l.user_id = uc.user_id AND l.id > {WATERMARK}
    WHERE uc.user_id {IN_WORLD}
)
SELECT
    array(SELECT u.id FROM users u WHERE u.id {IN_WORLD}) AS alive,
    array(SELECT uc.user_id FROM user_credits uc WHERE uc.user_id {IN_WORLD}) AS accounts,
    array(SELECT t.team_member_id FROM team_credit_sharing t
          WHERE t.team_admin_id = %(a)s) AS team,
    (SELECT u.role FROM users u WHERE u.id = %(w)s) AS role_w,
    (SELECT coalesce(sum(amount), 0) FROM own WHERE user_id = %(w)s AND type = 'credit'
        AND source IN {ALLOCATION_SOURCES}) AS allocated_w,
    (SELECT count(*) FROM own WHERE user_id = %(w)s AND source = 'admin_grant'
        AND idempotency_key IS NULL) AS grants_w,
    (SELECT count(*) FROM own WHERE user_id = %(u)s AND type = 'credit'
        AND idempotency_key = 'G1') AS keyed_grants_u,
    (SELECT count(*) FROM own WHERE coalesce(actor_user_id, user_id) = %(m)s
        AND type = 'debit' AND idempotency_key = 'K1') AS keyed_debits_m,
    (SELECT count(*) FROM own WHERE user_id = %(u)s AND amount = -200) AS own_debits_u,
    (SELECT count(*) FROM own WHERE user_id = %(a)s AND actor_user_id = %(m)s
        AND amount = -3000) AS pool_debits_m,
    (SELECT count(*) FROM credit_usage_log l WHERE l.refund_of = %(d)s) AS refunds_d,
    (SELECT count(*) FROM credit_usage_log l WHERE l.refund_of = %(d2)s) AS refunds_d2,
    (SELECT count(*) FROM own WHERE user_id = %(u)s AND source = 'promo_exp') AS expiring_grants_u,
    (SELECT count(*) FROM own WHERE user_id = %(m)s AND source = 'promo_prio') AS priority_grants_m,
    (SELECT count(*) FROM own WHERE user_id = %(l)s AND amount = -150) AS lots_debits_l,
    (SELECT count(*) FROM own WHERE user_id = %(b)s AND actor_user_id = %(n)s
        AND amount = -400) AS lots_pool_debits_n,
    (SELECT count(*) FROM own WHERE user_id = %(r)s) AS entries_r,
    (SELECT count(*) FROM own WHERE user_id = %(r2)s) AS entries_r2,
    (SELECT uc.remaining_credits FROM user_credits uc WHERE uc.user_id = %(r)s) AS remaining_r,
    (SELECT uc.remaining_credits FROM user_credits uc WHERE uc.user_id = %(r2)s) AS remaining_r2
"""


# What the renewal world's writers left (revision 0011).
RENEWAL_FACTS_SQL = f"""
WITH own AS MATERIALIZED (
    SELECT l.* FROM user_credits uc
    JOIN credit_usage_log l ON l.user_id = uc.user_id AND l.id > {WATERMARK}
    WHERE uc.user_id = ANY(%(renewal_users)s)
)
SELECT
    (SELECT u.role FROM users u WHERE u.id = %(y)s) AS role_y,
    (SELECT u.role FROM users u WHERE u.id = %(t)s) AS role_t,
    (SELECT u.role FROM users u WHERE u.id = %(g)s) AS role_g,
    (SELECT count(*) FROM own WHERE user_id = %(v)s AND source = 'sched_grant') AS grants_v,
    (SELECT count(*) FROM own WHERE user_id = %(g)s AND amount = -50) AS period_debits_g,
    (SELECT count(*) FROM credit_usage_log l WHERE l.refund_of = %(dg)s) AS refunds_dg,
    (SELECT uc.period_ends_at IS NOT NULL FROM user_credits uc
     WHERE uc.user_id = %(k)s) AS period_k,
    (SELECT rc.renewal_interval IS NOT NULL FROM role_credits rc
     WHERE rc.role = %(later)s) AS later_renews
"""


def facts(conn: Conn, world: World) -> Facts:
    """What the world holds now, for the effect checks."""
    params: dict[str, Any] = {
        **world.scope(), "a": world.a, "m": world.m, "u": world.u, "w": world.w,
        "r": world.r, "r2": world.r2, "d": world.d, "d2": world.d2, "l": world.lots,
        "b": world.b, "n": world.n,
    }
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(FACTS_SQL, params).fetchone()
        assert row is not None
        renewal = cur.execute(RENEWAL_FACTS_SQL, {
            "renewal_users": [world.g, world.v], "y": world.y, "t": world.t, "g": world.g,
            "v": world.v, "dg": world.dg, "k": world.k, "later": LATER,
        }).fetchone() if world.with_renewal else {}
    assert renewal is not None
    return {**row, **renewal, "alive": set(row["alive"]), "accounts": set(row["accounts"]),
            "team": set(row["team"])}


Effect = Callable[[World, Facts, int, int], list[str]]


def _expect(ok: bool, what: str) -> list[str]:
    return [] if ok else [what]


def _signed_up(ids: list[uuid.UUID], f: Facts, n: int, what: str) -> list[str]:
    alive = sum(i in f["alive"] for i in ids)
    accounts = sum(i in f["accounts"] for i in ids)
    return _expect(alive == accounts == len(ids) * n,
                   f"{what} committed {n}x: {alive} of {len(ids)} users, {accounts} accounts")


def _effect_signup(world: World, f: Facts, target: int, n: int) -> list[str]:
    return _signed_up([world.s if target == 1 else world.s2], f, n, "signup")


def _effect_bulk(world: World, f: Facts, target: int, n: int) -> list[str]:
    return _signed_up(world.bulk(target), f, n, "bulk signup")


def _effect_backfill(world: World, f: Facts, target: int, n: int) -> list[str]:
    opened = world.w not in f["alive"] or world.w in f["accounts"]
    return _expect(n == 0 or opened, "backfill committed but W has no balance row")


def _counted(name: str, expected: int) -> Callable[[World, Facts, int, int], list[str]]:
    """An effect counting entries: ``expected`` of them per commit (0: at most one)."""

    def check(world: World, f: Facts, target: int, n: int) -> list[str]:
        want = n * expected if expected else min(n, 1)
        return _expect(f[name] == want, f"{name} = {f[name]} after {n} commit(s), not {want}")

    return check


def _if_alive(who: Callable[[World], uuid.UUID], effect: Effect) -> Effect:
    """Check ``effect`` only while its target user still exists."""

    def check(world: World, f: Facts, target: int, n: int) -> list[str]:
        return effect(world, f, target, n) if who(world) in f["alive"] else []

    return check


def _effect_role_change(world: World, f: Facts, target: int, n: int) -> list[str]:
    want = "super_admin" if n else "member"
    return _expect(f["role_w"] == want, f"W's role is {f['role_w']!r}, not {want!r}")


def _effect_team_add(world: World, f: Facts, target: int, n: int) -> list[str]:
    joined = world.x if target == 1 else world.x2
    if joined not in f["alive"]:
        return []
    return _expect((joined in f["team"]) == (n > 0), f"team add committed {n}x: team {f['team']}")


def _effect_team_remove(world: World, f: Facts, target: int, n: int) -> list[str]:
    return _expect((world.m in f["team"]) == (n == 0), f"team remove committed {n}x: team {f['team']}")


def _effect_user_delete(world: World, f: Facts, target: int, n: int) -> list[str]:
    alive = [i in f["alive"] for i in deleted_by_user_delete(world)]
    return _expect(alive == [n == 0] * len(alive), f"user delete committed {n}x: alive {alive}")


def _effect_recreate(world: World, f: Facts, target: int, n: int) -> list[str]:
    who, suffix = (world.r, "r") if target == 1 else (world.r2, "r2")
    state = (who in f["alive"], who in f["accounts"], f[f"entries_{suffix}"], f[f"remaining_{suffix}"])
    want = (True, True, 1, MEMBER_CREDITS) if n else (False, False, 0, None)
    return _expect(state == want, f"re-created {n}x: (user, account, own entries, remaining)"
                                  f" = {state}, not {want}")


def _effect_schedule(world: World, f: Facts, target: int, n: int) -> list[str]:
    scheduled = f["period_k"] if world.k in f["alive"] else n > 0
    return _expect(f["later_renews"] == scheduled == (n > 0),
                   f"schedule committed {n}x: {LATER} renews {f['later_renews']},"
                   f" K has a period {f['period_k']}")


def _effect_sched_signup(world: World, f: Facts, target: int, n: int) -> list[str]:
    return _signed_up([world.s3 if target == 1 else world.s4], f, n, "sched_signup")


def _role_is(who: Callable[[World], uuid.UUID], fact: str, role: str) -> Effect:
    """The user's role is ``role`` if the writer committed, else not (while the user exists)."""

    def check(world: World, f: Facts, target: int, n: int) -> list[str]:
        if who(world) not in f["alive"]:
            return []
        return _expect((f[fact] == role) == (n > 0), f"{fact} = {f[fact]!r} after {n} commit(s)")

    return check


EFFECTS: dict[str, Effect] = {
    "signup": _effect_signup,
    "bulk_signup": _effect_bulk,
    "backfill": _effect_backfill,
    "batched_walk": _effect_backfill,
    "own_debit": _if_alive(lambda w: w.u, _counted("own_debits_u", 1)),
    "pool_debit": _counted("pool_debits_m", 1),
    "keyed_debit": _counted("keyed_debits_m", 0),
    "keyed_grant": _if_alive(lambda w: w.u, _counted("keyed_grants_u", 0)),
    "grant": _if_alive(lambda w: w.w, _counted("grants_w", 1)),
    "refund": _counted("refunds_d", 1),
    "role_change": _if_alive(lambda w: w.w, _effect_role_change),
    "team_add": _effect_team_add,
    "team_remove": _if_alive(lambda w: w.m, _effect_team_remove),
    "user_delete": _effect_user_delete,
    "recreate": _effect_recreate,
    "expiring_grant": _if_alive(lambda w: w.u, _counted("expiring_grants_u", 1)),
    "priority_grant": _if_alive(lambda w: w.m, _counted("priority_grants_m", 1)),
    "lots_debit": _if_alive(lambda w: w.lots, _counted("lots_debits_l", 1)),
    "lots_pool_debit": _if_alive(lambda w: w.b, _counted("lots_pool_debits_n", 1)),
    "lapsed_refund": _counted("refunds_d2", 1),
    # What a sweep did is checked by sweep_problems, from its report.
    "sweep": lambda world, f, target, n: [],
    "limited_sweep": lambda world, f, target, n: [],
    "future_sweep": lambda world, f, target, n: [],
    # What a renewal did is checked by renewal_problems, from its report.
    "renew": lambda world, f, target, n: [],
    "limited_renew": lambda world, f, target, n: [],
    "future_renew": lambda world, f, target, n: [],
    "schedule": _effect_schedule,
    "sched_signup": _effect_sched_signup,
    "sched_role_change": _role_is(lambda w: w.y, "role_y", LATER),
    "sched_grant": _counted("grants_v", 1),
    "period_role_change": _role_is(lambda w: w.t, "role_t", PLUS),
    "period_debit": _if_alive(lambda w: w.g, _counted("period_debits_g", 1)),
    "period_refund": _counted("refunds_dg", 1),
}

# Lots of the setup that were due at a sweep's as_of and still hold credits.
# A committed sweep that skipped no account leaves none (the sweep ran when
# nothing but the other session could hold an account, and that session can
# only add to such a lot by refunding onto it, which expires at once).
DUE_LEFT_SQL = f"""
SELECT l.id, l.user_id, l.amount, l.taken, l.expired, l.expires_at
FROM credit_lots l
WHERE l.user_id {IN_WORLD} AND l.log_id <= %(setup_log)s
  AND l.expires_at <= %(as_of)s AND l.taken < l.amount - l.expired
"""

# Lots that expired before their expiry: only a sweep as of a later time does that.
EARLY_SQL = f"""
SELECT l.id, l.user_id, l.expired, l.expires_at
FROM credit_lots l
WHERE l.user_id {IN_WORLD} AND l.expired > 0 AND l.expires_at > now()
"""


def sweep_problems(conn: Conn, run: Run) -> list[str]:
    """What each committed sweep reports and left: at most p_limit lots, nothing
    due left behind unless it skipped a busy account, nothing expired early
    unless a sweep ahead of time ran."""
    problems: list[str] = []
    params = {**run.world.scope(), "setup_log": run.world.setup_log}
    for o in run.outcomes:
        if o.writer not in SWEEPS or not o.committed:
            continue
        report = o.result
        if o.writer == "limited_sweep" and report["lots_expired"] > SWEEP_LIMIT:
            problems.append(f"limited sweep expired {report['lots_expired']} lots: {report}")
        if o.writer != "limited_sweep" and report["accounts_skipped"] == 0:
            left = conn.execute(DUE_LEFT_SQL, {**params, "as_of": report["as_of"]}).fetchall()
            problems += [f"{o.writer} ({report}) left a due lot: {row}" for row in left]
    if not any(o.writer in AHEAD and o.committed for o in run.outcomes):
        problems += [f"lot expired before its expiry: {row}"
                     for row in conn.execute(EARLY_SQL, params).fetchall()]
    return problems


# Accounts of a renewing role whose period had ended by a renewal's as_of: a
# committed renewal that skipped no account leaves none (the other session
# makes no account due: every period it records ends in the future).
RENEWAL_DUE_LEFT_SQL = f"""
SELECT uc.user_id, u.role, uc.period_ends_at
FROM user_credits uc
{RENEWING_ROLE}
WHERE uc.user_id {IN_WORLD} AND r.renewal_interval IS NOT NULL
  AND uc.period_ends_at <= %(as_of)s
"""


def renewal_problems(conn: Conn, run: Run) -> list[str]:
    """What each committed renewal reports and left: at most p_limit accounts,
    nothing due left behind unless it skipped a busy account; and at REPEATABLE
    READ and SERIALIZABLE the operator's start of a role's renewals never
    commits (CR014, revision 0012: read committed required)."""
    problems: list[str] = []
    for o in run.outcomes:
        if o.writer == "schedule" and run.pair.level != "read_committed" and (
                o.committed or o.sqlstate not in {"CR014"} | RETRYABLE):
            problems.append(f"schedule at {run.pair.level} ended with"
                            f" {o.sqlstate or 'a commit'}, not CR014 (ReadCommittedRequired)")
        if o.writer not in RENEWALS or not o.committed:
            continue
        report = o.result
        if o.writer == "limited_renew" and report["accounts_renewed"] > RENEW_LIMIT:
            problems.append(f"limited renewal renewed {report['accounts_renewed']}: {report}")
        if o.writer != "limited_renew" and report["accounts_skipped"] == 0:
            left = conn.execute(RENEWAL_DUE_LEFT_SQL,
                                {**run.world.scope(), "as_of": report["as_of"]}).fetchall()
            problems += [f"{o.writer} ({report}) left a due account: {row}" for row in left]
    return problems


def role_change_problems(world: World, f: Facts, run: Run) -> list[str]:
    """After a committed role change of W to super_admin, W (unless deleted)
    has a balance row (0007 opens it in the role change) holding at least the
    super_admin allocation; with NEW_SCHEMA False only an existing row is held to it."""
    if not any(o.writer == "role_change" and o.committed for o in run.outcomes):
        return []
    if world.w not in f["alive"] or (not NEW_SCHEMA and world.w not in f["accounts"]):
        return []
    return [] if world.w in f["accounts"] and f["allocated_w"] >= SUPER_ADMIN_CREDITS else [
        f"role change to super_admin committed: W has account {world.w in f['accounts']},"
        f" allocations {f['allocated_w']} (needs {SUPER_ADMIN_CREDITS})"]


def effect_problems(conn: Conn, run: Run) -> list[str]:
    """Each writer of the run left exactly what its commits (or rollbacks) say."""
    f = facts(conn, run.world)
    done = Counter((o.writer, o.target) for o in run.outcomes if o.committed)
    problems: list[str] = []
    for writer, target in sorted({(o.writer, o.target) for o in run.outcomes}):
        problems += EFFECTS[writer](run.world, f, target, done[(writer, target)])
    return (problems + role_change_problems(run.world, f, run) + sweep_problems(conn, run)
            + renewal_problems(conn, run))


# --- the matrix ------------------------------------------------------------


@dataclass
class Tally:
    """What a matrix run did, for the report and the failure message."""

    interleavings: int = 0
    blocked: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    sqlstates: Counter[str] = field(default_factory=Counter)

    def summary(self, level: str) -> str:
        """One line: interleavings, blocked, failing, seconds, SQLSTATEs raised."""
        states = ", ".join(f"{k}: {v}" for k, v in sorted(self.sqlstates.items())) or "none"
        return (f"{level}: {self.interleavings} interleavings, {self.blocked} with session 2"
                f" blocked by session 1, {len(self.failures)} failing, {self.seconds:.1f} s;"
                f" SQLSTATEs raised: {states}")


def check_run(sessions: Sessions, run: Run) -> list[str]:
    """Every problem of one finished run (then its world is deleted)."""
    try:
        return (sqlstate_problems(run) + invariant_problems(sessions.monitor, run.world)
                + effect_problems(sessions.monitor, run))
    finally:
        drop_world(sessions.monitor, run.world)
        if run.world.with_renewal:
            reset_renewal_roles(sessions.monitor)


def _one_case(sessions: Sessions, pair: Pair, second_first: bool, tally: Tally) -> Run | None:
    try:
        run = run_interleaving(sessions, pair, second_first)
    except TimeoutError as exc:
        tally.failures.append(f"[{pair.level}] {pair.first.name} -> {pair.second.name}: {exc}")
        return None
    tally.interleavings += 1
    tally.blocked += run.blocked
    tally.sqlstates.update(o.sqlstate for o in run.outcomes if o.sqlstate)
    tally.failures += [f"{run.label()}: {p}" for p in check_run(sessions, run)]
    return run


# Writers that read every user (so may meet any other writer's rows).
SCANNERS = frozenset({"backfill", "batched_walk"})


def interleaved(first: Writer, second: Writer) -> bool:
    """Whether the matrix runs this ordered pair (at every level).

    Every pair of the writers before lots runs, as it always has. A pair with
    a lot writer runs when the two share a row (``touches``) or one of them
    scans every user: with nothing in common neither can block the other nor
    fail for what the other wrote, and the world's checks would only see two
    separate writes. This keeps the lots' part of the matrix to well under a
    minute of CI."""
    if not (first.lots or second.lots or first.renewal or second.renewal):
        return True
    return bool(first.touches & second.touches) or bool({first.name, second.name} & SCANNERS)


def pairs(level: str) -> Iterator[Pair]:
    """Every ordered pair of writers (a writer with itself included) the matrix runs at ``level``."""
    for first in WRITERS:
        for second in WRITERS:
            if interleaved(first, second):
                yield Pair(first, second, level)


# The tables every world churns: each world's users are deleted after it, and
# nothing else may clean up after them (autovacuum may be off on a test server).
CHURNED = ("users, user_credits, team_credit_sharing, credit_idempotency_keys, credit_usage_log,"
           " credit_lots, credit_lot_takes, role_credits")
VACUUM_EVERY = 50


def housekeeping(monitor: Conn) -> None:
    """VACUUM and ANALYZE what the worlds churn, as autovacuum would: without
    it the dead users slow every backfill's scan and stale statistics give the
    checks full scans of the whole log."""
    monitor.execute(f"VACUUM (ANALYZE) {CHURNED}")


def run_matrix(sessions: Sessions, level: str) -> Tally:
    """Every ordered pair at ``level``, in both commit orders where both can happen."""
    tally = Tally()
    started = time.perf_counter()
    sessions.set_level(LEVELS[level])
    for n, pair in enumerate(pairs(level)):
        if n % VACUUM_EVERY == 0:
            housekeeping(sessions.monitor)
        run = _one_case(sessions, pair, second_first=False, tally=tally)
        if run is not None and not run.blocked:
            _one_case(sessions, pair, second_first=True, tally=tally)
    tally.seconds = time.perf_counter() - started
    return tally


@contextmanager
def open_sessions(url: str) -> Iterator[Sessions]:
    """Two writing sessions (autocommit off) and an autocommit monitor."""
    with (
        psycopg.connect(url, autocommit=False) as one,
        psycopg.connect(url, autocommit=False) as two,
        psycopg.connect(url, autocommit=True) as monitor,
    ):
        yield Sessions(one, two, monitor)
