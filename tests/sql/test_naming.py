"""One naming scheme: public holds the interface, credits_internal everything else.

The interface is what docs/sql-contract.md documents for callers: the tables, the
functions they call, credits_current_user_id() and credits_backfill_candidates. A
helper, a trigger function or a bookkeeping table in public would be a name a
host's own objects can collide with, and one more prefix to learn.
"""

from __future__ import annotations

from tests.support.helpers import Conn

INTERFACE_RELATIONS = {
    "users", "role_credits", "user_credits", "credit_usage_log", "team_credit_sharing",
    "credit_idempotency_keys", "credit_allocation_failures", "credits_backfill_candidates",
    "credit_lots", "credit_lot_takes", "credits_db_version",
}
INTERFACE_FUNCTIONS = {
    "backfill_user_credits", "backfill_user_credits_batch", "credit_allocation_report",
    "add_team_member", "remove_team_member", "debit_credits", "grant_credits",
    "refund_credits", "get_credit_balance", "verify_credit_integrity",
    "credits_current_user_id", "expire_credits", "get_credit_lots", "renew_allowances",
}


def test_public_holds_only_the_interface(conn: Conn) -> None:
    relations = {name for (name,) in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind IN ('r', 'p', 'v', 'm', 'f')")}
    functions = {name for (name,) in conn.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace")}
    assert relations == INTERFACE_RELATIONS
    assert functions == INTERFACE_FUNCTIONS


def test_internal_objects_carry_no_prefix(conn: Conn) -> None:
    names = [name for (name,) in conn.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'credits_internal'::regnamespace"
        " UNION ALL SELECT relname FROM pg_class"
        " WHERE relnamespace = 'credits_internal'::regnamespace AND relkind = 'r'")]
    assert sorted(names) == ["allocate_on_signup", "allowance_period", "backfill",
                             "current_user_id", "install_record", "lock_allocation_roles",
                             "lot_summary",
                             "refuse_log_change", "replayed_result", "schedule_renewals",
                             "take_from_lots", "topup_on_role_change"]
