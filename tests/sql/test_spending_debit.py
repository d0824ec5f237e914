"""debit_credits, grant_credits, refund_credits and get_credit_balance: every rule and error code."""

from __future__ import annotations

import uuid

import pytest

from tests.support.helpers import Conn, add_users, add_users_without_credits, balance
from tests.support.spending import (
    add_member,
    credit_balance,
    debit,
    fails_cleanly,
    grant,
    integrity,
    refund,
)

INT_MAX = 2**31 - 1
DEBIT = "SELECT debit_credits(%s, %s)"


def log_entry(conn: Conn, log_id: int) -> tuple[object, ...]:
    row = conn.execute(
        "SELECT user_id::text, actor_user_id::text, amount, type, source, description,"
        " idempotency_key, refund_of FROM credit_usage_log WHERE id = %s",
        (log_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture
def team(conn: Conn) -> tuple[str, str, str]:
    """(admin with 5000, member with 350 in the admin's pool, outsider with 350)."""
    admin, member, outsider = add_users(conn, "team_admin", "member", "member")
    add_member(conn, admin, member)
    return admin, member, outsider


# --- debit ---------------------------------------------------------------------------


def test_debit_own_account(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    result = debit(conn, user, 100, description="report")
    assert result == {
        "log_id": result["log_id"], "account_user_id": user, "actor_user_id": None,
        "amount": 100, "remaining_credits": 250, "from_team_pool": False, "replayed": False,
    }
    assert balance(conn, user) == (350, 100, 250)
    assert log_entry(conn, result["log_id"]) == (
        user, None, -100, "debit", "usage", "report", None, None
    )
    assert integrity(conn) == []


def test_debit_exactly_the_remaining_balance(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    assert debit(conn, user, 350)["remaining_credits"] == 0
    fails_cleanly(conn, "CR001", DEBIT, (user, 1))


def test_member_falls_back_to_the_team_pool(conn: Conn, team: tuple[str, str, str]) -> None:
    admin, member, _ = team
    result = debit(conn, member, 400, source="export")
    assert result["account_user_id"] == admin
    assert result["actor_user_id"] == member
    assert result["from_team_pool"] is True
    assert result["amount"] == 400 and result["remaining_credits"] == 4600
    assert balance(conn, member) == (350, 0, 350)
    assert balance(conn, admin) == (5000, 400, 4600)
    assert log_entry(conn, result["log_id"])[:5] == (admin, member, -400, "debit", "export")
    assert integrity(conn) == []


def test_own_account_is_used_first(conn: Conn, team: tuple[str, str, str]) -> None:
    admin, member, _ = team
    assert debit(conn, member, 300)["from_team_pool"] is False
    assert balance(conn, admin) == (5000, 0, 5000)


def test_debits_are_never_split(conn: Conn, team: tuple[str, str, str]) -> None:
    admin, member, _ = team
    debit(conn, admin, 4800)  # pool 200 left, member's own 350
    error = fails_cleanly(conn, "CR001", DEBIT, (member, 400))  # 350 + 200 would cover it
    assert "350" in (error.diag.message_detail or "")


def test_insufficient_credits_is_cr001(conn: Conn, team: tuple[str, str, str]) -> None:
    admin, member, outsider = team
    fails_cleanly(conn, "CR001", DEBIT, (outsider, 351))
    fails_cleanly(conn, "CR001", DEBIT, (member, 5001))
    fails_cleanly(conn, "CR001", DEBIT, (admin, 5001))  # an admin has no pool of their own


def test_user_without_balance_row(conn: Conn) -> None:
    [user] = add_users_without_credits(conn, "member")
    fails_cleanly(conn, "CR001", DEBIT, (user, 1))
    assert credit_balance(conn, user)["own"] is None


def test_unknown_or_null_user_is_cr005(conn: Conn) -> None:
    fails_cleanly(conn, "CR005", DEBIT, (str(uuid.uuid4()), 1))
    fails_cleanly(conn, "CR005", DEBIT, (None, 1))


@pytest.mark.parametrize("amount", [None, 0, -1, -INT_MAX])
def test_invalid_amount_is_cr006(conn: Conn, amount: int | None) -> None:
    [user] = add_users(conn, "member")
    fails_cleanly(conn, "CR006", DEBIT, (user, amount))
    fails_cleanly(conn, "CR006", "SELECT debit_credits(%s, %s, p_idempotency_key => 'k')",
                  (user, amount))


def test_invalid_source_or_key_is_22023(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    fails_cleanly(conn, "22023", "SELECT debit_credits(%s, 1, NULL)", (user,))
    fails_cleanly(conn, "22023", "SELECT debit_credits(%s, 1, '')", (user,))
    fails_cleanly(conn, "22023", "SELECT debit_credits(%s, 1, p_idempotency_key => '')", (user,))


def test_argument_check_order(conn: Conn) -> None:
    # NULL user before amount before source.
    fails_cleanly(conn, "CR005", "SELECT debit_credits(NULL, 0, '')")
    [user] = add_users(conn, "member")
    fails_cleanly(conn, "CR006", "SELECT debit_credits(%s, 0, '')", (user,))


def test_the_log_stays_append_only(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    log_id = debit(conn, user, 1)["log_id"]
    fails_cleanly(conn, "CR010", "UPDATE credit_usage_log SET amount = -2 WHERE id = %s", (log_id,))
    fails_cleanly(conn, "CR010", "DELETE FROM credit_usage_log WHERE id = %s", (log_id,))


# --- idempotency ---------------------------------------------------------------------


def test_keyed_debit_replays(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    first = debit(conn, user, 100, idempotency_key="order-1")
    debit(conn, user, 50)
    before = balance(conn, user)
    again = debit(conn, user, 100, idempotency_key="order-1")
    assert again == {**first, "replayed": True}  # the original remaining_credits, 250
    assert balance(conn, user) == before


def test_keyed_pool_debit_replays_even_after_leaving_the_team(
    conn: Conn, team: tuple[str, str, str]
) -> None:
    admin, member, _ = team
    first = debit(conn, member, 1000, idempotency_key="job-7")
    assert first["from_team_pool"] is True
    conn.execute("SELECT remove_team_member(%s, %s)", (admin, member))
    before = balance(conn, admin), balance(conn, member)
    again = debit(conn, member, 1000, idempotency_key="job-7")
    assert again == {**first, "replayed": True}
    assert (balance(conn, admin), balance(conn, member)) == before


def test_key_reuse_with_other_parameters_is_cr007(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    debit(conn, user, 100, idempotency_key="k")
    q = "SELECT debit_credits(%s, %s, %s, p_idempotency_key => 'k')"
    fails_cleanly(conn, "CR007", q, (user, 101, "usage"))
    fails_cleanly(conn, "CR007", q, (user, 100, "other"))
    # A grant's key lives in the grants' namespace: the debit's 'k' does not take it.
    assert grant(conn, user, 100, idempotency_key="k")["replayed"] is False


def test_keys_are_scoped_per_account(conn: Conn) -> None:
    first, second = add_users(conn, "member", "member")
    a = debit(conn, first, 10, idempotency_key="same")
    b = debit(conn, second, 10, idempotency_key="same")
    assert a["log_id"] != b["log_id"] and not b["replayed"]


def test_members_of_one_pool_each_own_their_keys(conn: Conn) -> None:
    admin, first, second = add_users(conn, "team_admin", "member", "member")
    add_member(conn, admin, first)
    add_member(conn, admin, second)
    a = debit(conn, first, 1000, idempotency_key="shared")
    b = debit(conn, second, 1000, idempotency_key="shared")
    assert a["from_team_pool"] and b["from_team_pool"] and not b["replayed"]
    assert a["log_id"] != b["log_id"]
    assert balance(conn, admin) == (5000, 2000, 3000)


def test_a_key_a_member_spent_on_the_pool_is_still_the_admins_to_use(conn: Conn) -> None:
    # The member's pool debit lands on the admin's account, but its key is the
    # member's: the admin's own 'k' is a first call, not a conflict.
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    debit(conn, member, 400, idempotency_key="k")
    mine = debit(conn, admin, 10, idempotency_key="k")
    assert mine["replayed"] is False and mine["from_team_pool"] is False
    assert balance(conn, admin) == (5000, 410, 4590)


def test_refused_keyed_debit_leaves_the_key_free(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    fails_cleanly(conn, "CR001", "SELECT debit_credits(%s, 400, p_idempotency_key => 'k')", (user,))
    grant(conn, user, 100)
    assert debit(conn, user, 400, idempotency_key="k")["replayed"] is False


# --- grant ---------------------------------------------------------------------------


def test_grant(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    debit(conn, user, 50)
    result = grant(conn, user, 1000, description="bonus")
    assert result == {
        "log_id": result["log_id"], "account_user_id": user, "actor_user_id": None,
        "amount": 1000, "remaining_credits": 1300, "from_team_pool": False, "replayed": False,
    }
    assert balance(conn, user) == (1350, 50, 1300)
    assert log_entry(conn, result["log_id"])[2:6] == (1000, "credit", "admin_grant", "bonus")
    assert integrity(conn) == []


def test_grant_creates_a_missing_balance_row(conn: Conn) -> None:
    # The account is opened with the role allocation the backfill would have
    # given, so opening it by a grant costs the user nothing.
    [user] = add_users_without_credits(conn, "member")
    assert grant(conn, user, 70)["remaining_credits"] == 420
    assert balance(conn, user) == (420, 0, 420)
    sources = conn.execute(
        "SELECT source, amount FROM credit_usage_log WHERE user_id = %s ORDER BY id", (user,)
    ).fetchall()
    assert sources == [("backfill", 350), ("admin_grant", 70)]
    assert conn.execute("SELECT backfill_user_credits()").fetchone()[0]["users_backfilled"] == 0  # type: ignore[index]
    assert integrity(conn) == []


def test_keyed_grant_replays(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    first = grant(conn, user, 500, idempotency_key="promo")
    before = balance(conn, user)
    assert grant(conn, user, 500, idempotency_key="promo") == {**first, "replayed": True}
    assert balance(conn, user) == before
    fails_cleanly(conn, "CR007", "SELECT grant_credits(%s, 501, p_idempotency_key => 'promo')",
                  (user,))
    fails_cleanly(conn, "CR007",
                  "SELECT grant_credits(%s, 500, 'other', p_idempotency_key => 'promo')", (user,))
    # The user's own debit keys are another namespace: 'promo' is free there.
    assert debit(conn, user, 500, idempotency_key="promo")["replayed"] is False


def test_grant_overflow_is_cr006_and_never_wraps(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    grant(conn, user, INT_MAX - 350)
    assert balance(conn, user) == (INT_MAX, 0, INT_MAX)
    fails_cleanly(conn, "CR006", "SELECT grant_credits(%s, 1)", (user,))
    fails_cleanly(conn, "CR006", "SELECT grant_credits(%s, %s)", (user, INT_MAX))


@pytest.mark.parametrize(
    ("args", "sqlstate"),
    [
        ((None, 1, "admin_grant"), "CR005"),
        (("unknown", 1, "admin_grant"), "CR005"),
        (("user", None, "admin_grant"), "CR006"),
        (("user", 0, "admin_grant"), "CR006"),
        (("user", -5, "admin_grant"), "CR006"),
        (("user", 1, None), "22023"),
        (("user", 1, ""), "22023"),
    ],
)
def test_grant_errors(conn: Conn, args: tuple[object, ...], sqlstate: str) -> None:
    [user] = add_users(conn, "member")
    mapping = {"user": user, "unknown": str(uuid.uuid4())}
    params = tuple(mapping.get(a, a) if isinstance(a, str) else a for a in args)
    fails_cleanly(conn, sqlstate, "SELECT grant_credits(%s, %s, %s)", params)


# --- refund --------------------------------------------------------------------------


def test_refund_own_debit(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    spent = debit(conn, user, 120)
    result = refund(conn, spent["log_id"])
    assert result["account_user_id"] == user and result["amount"] == 120
    assert result["remaining_credits"] == 350 and result["replayed"] is False
    assert balance(conn, user) == (470, 120, 350)
    assert log_entry(conn, result["log_id"])[2:5] == (120, "credit", "refund")
    assert log_entry(conn, result["log_id"])[7] == spent["log_id"]
    assert integrity(conn) == []


def test_refund_pool_debit_goes_back_to_the_pool(conn: Conn, team: tuple[str, str, str]) -> None:
    admin, member, _ = team
    spent = debit(conn, member, 1000)
    result = refund(conn, spent["log_id"])
    assert result["account_user_id"] == admin and result["actor_user_id"] == member
    assert result["from_team_pool"] is True
    assert balance(conn, admin) == (6000, 1000, 5000)
    assert balance(conn, member) == (350, 0, 350)
    assert integrity(conn) == []


def test_refund_errors_are_cr008(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    spent = debit(conn, user, 10)
    refund(conn, spent["log_id"])
    error = fails_cleanly(conn, "CR008", "SELECT refund_credits(%s)", (spent["log_id"],))
    assert "refund entry" in (error.diag.message_detail or "")
    granted = grant(conn, user, 5)
    fails_cleanly(conn, "CR008", "SELECT refund_credits(%s)", (granted["log_id"],))
    fails_cleanly(conn, "CR008", "SELECT refund_credits(%s)", (10**12,))
    fails_cleanly(conn, "CR008", "SELECT refund_credits(NULL)")


def test_refund_of_a_deleted_account_is_cr005(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    spent = debit(conn, user, 10)
    conn.execute("DELETE FROM users WHERE id = %s", (user,))
    fails_cleanly(conn, "CR005", "SELECT refund_credits(%s)", (spent["log_id"],))
    assert integrity(conn) == []  # its log rows stay, with nothing to compare them to


# --- balance -------------------------------------------------------------------------


def test_balance_of_a_team_member(conn: Conn, team: tuple[str, str, str]) -> None:
    admin, member, outsider = team
    debit(conn, admin, 4000)
    assert credit_balance(conn, member) == {
        "user_id": member,
        "own": {"total_credits": 350, "used_credits": 0, "remaining_credits": 350,
                "spendable_credits": 350, "next_expiry": None, "next_renewal": None},
        "team_admin_id": admin,
        "team_pool_remaining": 1000,
        "team_pool_spendable": 1000,
        "team_pool_next_expiry": None,
        "team_pool_next_renewal": None,
        "spendable": 1000,
    }
    debit(conn, admin, 900)
    assert credit_balance(conn, member)["spendable"] == 350  # the larger, never the sum
    assert credit_balance(conn, outsider) == {
        "user_id": outsider,
        "own": {"total_credits": 350, "used_credits": 0, "remaining_credits": 350,
                "spendable_credits": 350, "next_expiry": None, "next_renewal": None},
        "team_admin_id": None,
        "team_pool_remaining": None,
        "team_pool_spendable": None,
        "team_pool_next_expiry": None,
        "team_pool_next_renewal": None,
        "spendable": 350,
    }


def test_spendable_is_exactly_what_one_debit_accepts(conn: Conn, team: tuple[str, str, str]) -> None:
    _, member, _ = team
    spendable = credit_balance(conn, member)["spendable"]
    fails_cleanly(conn, "CR001", DEBIT, (member, spendable + 1))
    assert debit(conn, member, spendable)["amount"] == spendable


def test_balance_of_unknown_user_is_cr005(conn: Conn) -> None:
    fails_cleanly(conn, "CR005", "SELECT get_credit_balance(%s)", (str(uuid.uuid4()),))
    fails_cleanly(conn, "CR005", "SELECT get_credit_balance(NULL)")
    [user] = add_users_without_credits(conn, None)
    assert credit_balance(conn, user)["spendable"] == 0
