"""Bad input: every SQL function fuzzed with NULLs, zero, negatives, the integer
limits, huge and exotic strings, random and malformed user ids.

Each call must either succeed under the rules or raise the documented SQLSTATE,
change nothing when it fails, and leave verify_credit_integrity() empty. One
database per test function, a small fixed set of users made up front; each call
runs in autocommit (its own transaction).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import credits_db
from credits_db import errors
from tests.support.helpers import Conn, add_users, add_users_without_credits, balance
from tests.support.spending import integrity, state

INT_MAX = 2**31 - 1
INT_MIN = -(2**31)
DOCUMENTED = {f"CR{n:03d}" for n in range(1, 11)} | {"22023", "22004"}
MALFORMED_UUID = "22P02"  # the text given for a uuid does not parse (InvalidArgument)
ROLES = ("team_admin", "team_admin", "member", "member", "admin", "super_admin")

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


class Omit:
    """An argument left out of the call (its SQL default applies)."""

    def __repr__(self) -> str:
        return "OMIT"


OMIT = Omit()

MAX_KEY_LENGTH = 255  # longer idempotency keys are refused (22023): they may not fit the index

# --------------------------------------------------------------------------- strategies

HUGE = ["x" * 100_000, "\U0001f642" * 100_000,
        "".join(chr(0x4E00 + (i * 7919) % 20_000) for i in range(100_000))]
unicode_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
                       max_size=40)
texts = st.one_of(st.none(), st.just(""), unicode_text,
                  st.sampled_from(["usage", "k1", "k2", "\U0001f642", "\u200b", " ",
                                   "\U0001f469\u200d\U0001f469\u200d\U0001f467", "ñ", "'; --"]),
                  st.sampled_from(HUGE))
sources = st.one_of(st.sampled_from(["usage", "search", "\U0001f642"]), unicode_text, texts)
keys = st.one_of(st.none(), st.sampled_from(["k1", "k2", "k3"]), texts)
ints = st.one_of(st.none(), st.sampled_from([0, 1, -1, 2, 350, 5000, INT_MAX, INT_MIN,
                                             INT_MAX - 1, INT_MIN + 1]),
                 st.integers(INT_MIN, INT_MAX), st.integers(1, 400), st.integers(1, 400))
bigints = st.one_of(st.none(), st.sampled_from([0, -1, 2**63 - 1, -(2**63)]),
                    st.integers(-(2**63), 2**63 - 1))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


malformed_ids = st.one_of(st.sampled_from(["", "nobody", "123", "\U0001f642", "00000000-0000"]),
                          unicode_text.filter(lambda s: not _is_uuid(s)))


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(OMIT), strategy)


# Times from ten years ago to ten years ahead (never exactly now), and the infinities.
moments = st.one_of(st.none(), st.sampled_from(["infinity", "-infinity"]),
                    st.integers(-3650, 3650).map(
                        lambda days: datetime.now(UTC) + timedelta(days=days, seconds=1)))


def is_past(moment: Any) -> bool:
    """Not a time in the future (infinity is refused too: NULL never expires)."""
    return moment in ("-infinity", "infinity") or (isinstance(moment, datetime)
                                                    and moment <= datetime.now(UTC))


@dataclass
class World:
    conn: Conn
    users: list[str]
    debit_ids: list[int]

    def user_ids(self) -> st.SearchStrategy[Any]:
        known = st.sampled_from(self.users)
        return st.one_of(known, known.map(uuid.UUID), known, st.none(), st.uuids(),
                         malformed_ids)


def world(conn: Conn) -> World:
    # admin renews monthly; some accounts hold expiring and prioritised lots.
    conn.execute("UPDATE role_credits SET renewal_interval = '1 month', rollover_cap = 10"
                 " WHERE role = 'admin'")
    users = add_users(conn, *ROLES)
    for user, days in ((users[2], 3), (users[3], 400)):
        conn.execute("SELECT grant_credits(%s, 40, p_expires_at => now() + %s * interval '1 day')",
                     (user, days))
    conn.execute("SELECT grant_credits(%s, 25, p_priority => 5)", (users[3],))
    users += add_users_without_credits(conn, "member", None, "RecruitPro")
    credits_db.add_team_member(conn, users[0], users[2])
    debit_ids = [credits_db.debit(conn, users[2], amount).log_id  # something to refund
                 for amount in (10, 20, 30, 500, 1000)]  # the last two from the team pool
    return World(conn, users, debit_ids)


# --------------------------------------------------------------------------- calling

SIGNATURES: dict[str, list[tuple[str, str, bool]]] = {  # (name, type, optional)
    "debit_credits": [("p_user_id", "uuid", False), ("p_amount", "integer", False),
                      ("p_source", "text", True), ("p_description", "text", True),
                      ("p_idempotency_key", "text", True)],
    "grant_credits": [("p_user_id", "uuid", False), ("p_amount", "integer", False),
                      ("p_source", "text", True), ("p_description", "text", True),
                      ("p_idempotency_key", "text", True), ("p_expires_at", "timestamptz", True),
                      ("p_priority", "integer", True)],
    "refund_credits": [("p_log_id", "bigint", False), ("p_description", "text", True)],
    "get_credit_balance": [("p_user_id", "uuid", False)],
    "add_team_member": [("p_team_admin_id", "uuid", False), ("p_team_member_id", "uuid", False)],
    "remove_team_member": [("p_team_admin_id", "uuid", False),
                           ("p_team_member_id", "uuid", False)],
    "backfill_user_credits": [("p_dry_run", "boolean", True), ("p_limit", "integer", True)],
    "credit_allocation_report": [],
    "verify_credit_integrity": [],
    "expire_credits": [("p_as_of", "timestamptz", True), ("p_limit", "integer", True)],
    "renew_allowances": [("p_as_of", "timestamptz", True), ("p_limit", "integer", True)],
    "get_credit_lots": [("p_user_id", "uuid", False)],
}


def sql_call(function: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    present = [(name, type_) for name, type_, _ in SIGNATURES[function]
               if args.get(name, OMIT) is not OMIT]
    arguments = ", ".join(f"{name} => %({name})s::{type_}" for name, type_ in present)
    if function == "verify_credit_integrity":
        return ("SELECT coalesce(jsonb_agg(v), '[]') FROM verify_credit_integrity() v", {})
    return f"SELECT {function}({arguments})", {name: args[name] for name, _ in present}


def strategy(function: str, w: World) -> st.SearchStrategy[dict[str, Any]]:
    user = w.user_ids()
    credit = st.one_of(
        st.fixed_dictionaries({"p_user_id": user, "p_amount": ints,
                               "p_source": optional(sources), "p_description": optional(texts),
                               "p_idempotency_key": optional(keys)}),
        st.fixed_dictionaries({  # valid arguments: the rules decide
            "p_user_id": st.sampled_from(w.users), "p_amount": st.integers(1, 400),
            "p_source": optional(st.sampled_from(["usage", "\U0001f642", HUGE[1]])),
            "p_description": optional(texts),
            "p_idempotency_key": optional(st.sampled_from([None, "k1", "k2", "\U0001f642"]))}))
    pair = {"p_team_admin_id": user, "p_team_member_id": user}
    functions: dict[str, Any] = {
        "debit_credits": credit,
        "grant_credits": st.tuples(credit, st.fixed_dictionaries({
            "p_expires_at": optional(moments), "p_priority": optional(ints)})).map(
                lambda both: {**both[0], **both[1]}),
        "refund_credits": {"p_log_id": st.one_of(st.sampled_from(w.debit_ids),
                                                 st.integers(1, 20), bigints),
                           "p_description": optional(texts)},
        "get_credit_balance": {"p_user_id": user},
        "add_team_member": pair,
        "remove_team_member": pair,
        "backfill_user_credits": {"p_dry_run": optional(st.sampled_from([None, True, False])),
                                  "p_limit": optional(ints)},
        "credit_allocation_report": {},
        "verify_credit_integrity": {},
        "expire_credits": {"p_as_of": optional(moments), "p_limit": optional(ints)},
        "renew_allowances": {"p_as_of": optional(moments), "p_limit": optional(ints)},
        "get_credit_lots": {"p_user_id": user},
    }
    chosen = functions[function]
    return chosen if isinstance(chosen, st.SearchStrategy) else st.fixed_dictionaries(chosen)


def is_malformed(value: Any) -> bool:
    return isinstance(value, str) and not _is_uuid(value)


def expected_error(function: str, args: dict[str, Any]) -> tuple[bool, set[str]]:
    """(must fail, the SQLSTATEs allowed) for ``args``, from the documented rules.

    An invalid argument has exactly one answer, checked in the documented order,
    and the call must fail; once the arguments are valid the call may succeed or
    raise one of the function's rule errors.
    """
    ids = [v for k, v in args.items() if k.endswith("_id") and k != "p_log_id"]
    if any(is_malformed(v) for v in ids):
        return True, {MALFORMED_UUID}
    if function in ("debit_credits", "grant_credits"):
        source = args["p_source"]
        key = args["p_idempotency_key"]
        if args["p_user_id"] is None:
            return True, {"CR005"}
        if args["p_amount"] is None or args["p_amount"] <= 0:
            return True, {"CR006"}
        if source is None or source == "":
            return True, {"22023"}
        if key == "" or (isinstance(key, str) and len(key) > MAX_KEY_LENGTH):
            return True, {"22023"}
        if function == "debit_credits":
            return False, {"CR001", "CR005", "CR007"}
        priority = args.get("p_priority", OMIT)
        if isinstance(priority, int) and not 0 <= priority <= 100:
            return True, {"22023"}
        if is_past(args.get("p_expires_at", OMIT)):
            # Only a replay of an earlier grant with this key and expiry may succeed.
            return key in (None, OMIT), {"22023", "CR005", "CR006", "CR007"}
        return False, {"CR005", "CR006", "CR007"}
    if function == "refund_credits":
        if args["p_log_id"] is None:
            return True, {"CR008"}
        return False, {"CR008", "CR005", "CR006"}
    if function in ("get_credit_balance", "get_credit_lots"):
        return args["p_user_id"] is None, {"CR005"}
    if function in ("expire_credits", "renew_allowances"):
        as_of, limit = args["p_as_of"], args["p_limit"]
        if as_of is None:
            return True, {"22004"}
        if function == "renew_allowances" and as_of in ("infinity", "-infinity"):
            return True, {"22023"}
        if isinstance(limit, int) and limit < 1:
            return True, {"22023"}
        return False, set()
    if function in ("add_team_member", "remove_team_member"):
        if None in ids:
            return True, {"CR005"}
        if function == "remove_team_member":
            return False, set()
        if str(ids[0]) == str(ids[1]):
            return True, {"CR009"}
        return False, {"CR002", "CR003", "CR004", "CR005"}
    if function == "backfill_user_credits":
        if args["p_dry_run"] is None:
            return True, {"22004"}
        limit = args["p_limit"]
        if isinstance(limit, int) and limit < 1:
            return True, {"22023"}
    return False, set()


def call_and_check(w: World, function: str, args: dict[str, Any]) -> Any:
    """Run one call; check its error or its effect. Returns the result (None on error)."""
    conn = w.conn
    query, params = sql_call(function, args)
    must_fail, allowed = expected_error(function, args)
    before = state(conn)
    error: psycopg.Error | None = None
    try:
        row = conn.execute(query, params).fetchone()
    except psycopg.Error as exc:
        error = exc
    if error is not None:
        event(f"{function}: {error.sqlstate}")
        assert error.sqlstate in allowed, (function, args, error.sqlstate, str(error))
        assert error.sqlstate in DOCUMENTED | {MALFORMED_UUID}
        assert state(conn) == before, f"{function} failed with {error.sqlstate} but wrote"
        assert integrity(conn) == []
        return None
    event(f"{function}: ok")
    assert not must_fail, (function, args, f"should have failed with {allowed}")
    assert row is not None
    check_success(w, function, args, row[0], before)
    assert integrity(conn) == []
    return row[0]


def check_success(w: World, function: str, args: dict[str, Any], result: Any,
                  before: Any) -> None:
    conn = w.conn
    if function in ("debit_credits", "grant_credits"):
        assert result["amount"] == args["p_amount"] > 0
        account = result["account_user_id"]
        old = {str(r[0]): r for r in before[0]}.get(account)
        new = balance(conn, account)
        assert new is not None
        if result["replayed"]:
            assert state(conn)[:2] == before[:2]
        elif function == "debit_credits":
            assert old is not None and new[1] == old[2] + args["p_amount"]
            assert new[0] == old[1]
        else:
            opened_with = 0 if old is not None else new[0] - args["p_amount"]
            assert new[0] == (old[1] if old else 0) + opened_with + args["p_amount"]
        # total_credits never decreases and never wraps
        assert old is None or new[0] >= old[1]
        assert 0 <= new[2] == result["remaining_credits"] or result["replayed"]
    elif function == "refund_credits":
        assert result["replayed"] is False and result["amount"] > 0
        [debit] = [r for r in before[1] if r[0] == args["p_log_id"]]
        assert debit[4] == "debit" and result["amount"] == -debit[3]
    elif function == "get_credit_balance":
        assert result["spendable"] >= 0
        assert result["user_id"] == str(args["p_user_id"])
    elif function == "add_team_member":
        member = str(args["p_team_member_id"])
        row = conn.execute("SELECT team_admin_id::text FROM team_credit_sharing"
                           " WHERE team_member_id = %s", (member,)).fetchone()
        assert row == (str(args["p_team_admin_id"]),)
    elif function == "remove_team_member":
        pair = (str(args["p_team_admin_id"]), str(args["p_team_member_id"]))
        existed = any((str(a), str(m)) == pair for a, m in before[2])
        assert result is existed
    elif function == "backfill_user_credits":
        dry = args["p_dry_run"] is True
        assert result["dry_run"] is dry
        if dry:
            assert state(conn) == before
        limit = args["p_limit"]
        if isinstance(limit, int):
            assert result["users_backfilled"] <= limit
    elif function == "credit_allocation_report":
        assert result["users_total"] == result["users_with_credits"] + \
            result["users_without_credits"]
    elif function == "verify_credit_integrity":
        assert result == []
    elif function in ("expire_credits", "renew_allowances"):
        done = result["lots_expired" if function == "expire_credits" else "accounts_renewed"]
        limit = args["p_limit"]
        assert 0 <= done <= (limit if isinstance(limit, int) else done)
        assert result["accounts_skipped"] == 0  # nothing else holds an account here
    elif function == "get_credit_lots":
        remaining = balance(conn, str(args["p_user_id"]))
        assert sum(lot["remaining"] for lot in result) == (remaining[2] if remaining else 0)
        order = [(lot["priority"], lot["expires_at"] is None, lot["expires_at"] or "",
                  lot["lot_id"]) for lot in result]
        assert order == sorted(order)


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("function", list(SIGNATURES))
@FUZZ
@given(data=st.data())
def test_fuzz_sql_function(conn: Conn, function: str, data: st.DataObject) -> None:
    w = _world_of(conn)
    if function == "backfill_user_credits":
        add_users_without_credits(conn, data.draw(st.sampled_from(["member", None, "Nope"])))
    args = data.draw(strategy(function, w), label=function)
    call_and_check(w, function, args)


@FUZZ
@given(data=st.data())
def test_fuzz_random_sequences_of_calls(conn: Conn, data: st.DataObject) -> None:
    w = _world_of(conn)
    functions = st.sampled_from(list(SIGNATURES))
    for _ in range(data.draw(st.integers(1, 12))):
        function = data.draw(functions)
        call_and_check(w, function, data.draw(strategy(function, w), label=function))


_WORLDS: dict[int, World] = {}


def _world_of(conn: Conn) -> World:
    """One set of users per test function (its database), made at the first example."""
    if id(conn) not in _WORLDS or _WORLDS[id(conn)].conn is not conn:
        _WORLDS.clear()
        _WORLDS[id(conn)] = world(conn)
    return _WORLDS[id(conn)]


# --------------------------------------------------------------------------- overflow


grant_amounts = st.one_of(st.integers(1, INT_MAX), st.sampled_from([1, INT_MAX, INT_MAX - 350]),
                          st.integers(2**30, INT_MAX))
ledger_ops = st.lists(st.one_of(st.tuples(st.just("grant"), grant_amounts),
                                st.tuples(st.just("debit"), st.integers(1, INT_MAX)),
                                st.tuples(st.just("refund"), st.integers(0, 10))),
                      min_size=1, max_size=12)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=ledger_ops)
def test_totals_never_wrap_and_never_decrease(conn: Conn, ops: list[tuple[str, int]]) -> None:
    """Grants, debits and refunds near 2^31-1: CR006 exactly when the total would overflow."""
    [user] = add_users(conn, "member")
    total, used = 350, 0
    debits: list[tuple[int, int]] = []  # (log id, amount)
    refunded: set[int] = set()
    previous_total = total
    for kind, value in ops:
        before = state(conn)
        try:
            if kind == "grant":
                credits_db.grant(conn, user, value)
                assert total + value <= INT_MAX
                total += value
            elif kind == "debit":
                op = credits_db.debit(conn, user, value)
                assert value <= total - used
                used += value
                debits.append((op.log_id, value))
            elif debits:
                log_id, amount = debits[value % len(debits)]
                credits_db.refund(conn, log_id)
                assert log_id not in refunded and total + amount <= INT_MAX
                refunded.add(log_id)
                total += amount
        except credits_db.InvalidAmount:
            assert kind in ("grant", "refund") and total + (
                value if kind == "grant" else debits[value % len(debits)][1]) > INT_MAX
            assert state(conn) == before
        except credits_db.InsufficientCredits:
            assert kind == "debit" and value > total - used
            assert state(conn) == before
        except credits_db.AlreadyRefunded:
            assert kind == "refund" and debits[value % len(debits)][0] in refunded
            assert state(conn) == before
        new = balance(conn, user)
        assert new == (total, used, total - used), (kind, value)
        assert new[0] >= previous_total  # total_credits never decreases
        previous_total = new[0]
    assert integrity(conn) == []


# --------------------------------------------------------------------------- the Python API


@FUZZ
@given(data=st.data())
def test_python_api_raises_only_credits_errors(conn: Conn, data: st.DataObject) -> None:
    """Through the wrapper, a bad input is a CreditsError subclass, never a raw psycopg error."""
    w = _world_of(conn)
    user = data.draw(st.one_of(st.sampled_from(w.users), st.uuids().map(str), malformed_ids))
    other = data.draw(st.one_of(st.sampled_from(w.users), malformed_ids))
    amount = data.draw(st.integers(INT_MIN + 1, INT_MAX))  # INT_MIN: a known SQL bug, below
    text = data.draw(st.one_of(unicode_text, st.sampled_from(HUGE[:2])))
    key = data.draw(st.one_of(st.none(), st.sampled_from(["k1", "k2"]), unicode_text))
    calls: list[Callable[[], object]] = [
        lambda: credits_db.debit(conn, user, amount, source=text, idempotency_key=key),
        lambda: credits_db.grant(conn, user, amount, source=text, description=text,
                                 idempotency_key=key),
        lambda: credits_db.balance(conn, user),
        lambda: credits_db.add_team_member(conn, user, other),
        lambda: credits_db.remove_team_member(conn, user, other),
        lambda: credits_db.refund(conn, data.draw(st.integers(-(2**63), 2**63 - 1))),
        lambda: credits_db.backfill(conn, dry_run=data.draw(st.booleans()),
                                    limit=data.draw(st.one_of(st.none(), ints))),
        lambda: credits_db.history(conn, user, limit=data.draw(st.integers(1, 100))),
    ]
    error: credits_db.CreditsError | None = None
    try:
        data.draw(st.sampled_from(calls))()
    except credits_db.CreditsError as exc:  # anything else fails the test
        error = exc
    if error is not None:
        assert not isinstance(error, credits_db.ConnectionLost | credits_db.RetryableError)
        assert type(error) in set(errors.SQLSTATES.values())
    assert integrity(conn) == []


# --------------------------------------------------------------------------- edge inputs


def test_debit_of_int_min_without_a_key_is_cr006(conn: Conn) -> None:
    [user] = add_users(conn, "member")
    with pytest.raises(psycopg.Error) as caught:
        conn.execute("SELECT debit_credits(%s, %s::integer)", (user, INT_MIN))
    assert caught.value.sqlstate == "CR006"


@pytest.mark.parametrize("function", ["debit_credits", "grant_credits"])
def test_an_overlong_idempotency_key_is_a_documented_error(conn: Conn, function: str) -> None:
    [user] = add_users(conn, "member")
    before = state(conn)
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(f"SELECT {function}(%s, 1, 'usage', NULL, %s)", (user, HUGE[2]))
    assert state(conn) == before
    assert caught.value.sqlstate in DOCUMENTED


@pytest.mark.parametrize("amount", [INT_MAX + 1, INT_MIN - 1, 10**30])
@pytest.mark.parametrize("call", ["debit", "grant"])
def test_python_api_amount_outside_int4_is_invalid_amount(conn: Conn, call: str,
                                                          amount: int) -> None:
    [user] = add_users(conn, "member")
    function = credits_db.debit if call == "debit" else credits_db.grant
    with pytest.raises(credits_db.InvalidAmount):
        function(conn, user, amount)
