"""An operator giving a role a renewal_interval races the accounts that enter the role (0011).

``UPDATE role_credits SET renewal_interval = ...`` schedules the role's accounts in a
statement trigger (credits_internal.schedule_renewals, sql/030): it records each
account's current period, so that renew_allowances() renews it at that period's end.
An account opened in the role, or moved into it, by a transaction running beside the
operator's is lost both ways: its signup (or role change, grant, backfill) read role_credits
before the UPDATE committed (no interval: a one-time allocation, no period), and the
trigger's planning statement could not see the uncommitted account. Both commit; the
role renews, the account has period_ends_at NULL, and no renewal ever reaches it.

Neither session waits for the other (nothing is locked by both), so both commit
orders are deterministic; found for the interleaving matrix (its schedule writer against
sched_signup, sched_role_change, backfill). The fix checked on a scratch database (every case
passes): schedule_renewals() takes LOCK TABLE users, user_credits IN SHARE ROW
EXCLUSIVE MODE before its planning statement, once a role starts renewing.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.support.databases import Database
from tests.support.helpers import Conn
from tests.support.sessions import Background, blocked_or_done

ROLE = "renew_later"


Session = psycopg.Connection[Any]


def enter_role(conn: Session, how: str, user: str) -> None:
    """The user enters ROLE: a signup, a role change, or a grant or backfill opening the
    account."""
    if how == "signup":
        conn.execute("INSERT INTO users (id, role) VALUES (%s, %s)", (user, ROLE))
    elif how == "role_change":
        conn.execute("UPDATE users SET role = %s WHERE id = %s", (ROLE, user))
    elif how == "grant":
        conn.execute("SELECT grant_credits(%s, 25)", (user,))
    else:
        conn.execute("SELECT backfill_user_credits()")


@pytest.mark.parametrize("operator_starts", [True, False])
@pytest.mark.parametrize("how", ["signup", "role_change", "grant", "backfill"])
def test_an_account_entering_the_role_while_it_starts_renewing_is_scheduled(
        db: Database, conn: Conn, how: str, operator_starts: bool) -> None:
    """Both transactions commit: the role renews, so the account has a period (and
    renew_allowances() renews it at its end). The second to start may wait for the
    first (then the first commits first); if it does not, it commits first."""
    conn.execute("INSERT INTO role_credits (role, credits, rollover_cap) VALUES (%s, 300, 0)",
                 (ROLE,))
    user = str(uuid.uuid4())
    if how == "role_change":
        conn.execute("INSERT INTO users (id, role) VALUES (%s, 'member')", (user,))
    elif how in ("grant", "backfill"):
        # As the host had it before credits-db: no trigger, so no balance row.
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("INSERT INTO users (id, role) VALUES (%s, %s)", (user, ROLE))

    def schedule(session: Session) -> None:
        session.execute("UPDATE role_credits SET renewal_interval = '30 days' WHERE role = %s",
                        (ROLE,))

    def enter(session: Session) -> None:
        enter_role(session, how, user)

    with db.connect(autocommit=False) as operator, db.connect(autocommit=False) as other:
        (first, first_work), (second, second_work) = (
            ((operator, schedule), (other, enter)) if operator_starts
            else ((other, enter), (operator, schedule)))
        first_work(first)
        call = Background(lambda: second_work(second))
        if blocked_or_done(conn, second.info.backend_pid, call):
            first.commit()
            assert call.outcome() is None
            second.commit()
        else:
            assert call.outcome() is None
            second.commit()
            first.commit()

    row = conn.execute("SELECT period_ends_at IS NOT NULL, period_allowance"
                       " FROM user_credits WHERE user_id = %s", (user,)).fetchone()
    assert row is not None
    assert row == (True, 350 if how == "role_change" else 300), (
        "the account's role renews but it has no allowance period (period_ends_at NULL):"
        " no renewal will ever reach it")
