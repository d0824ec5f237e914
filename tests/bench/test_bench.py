"""The benchmark's quick mode runs, so the bench cannot rot. Speed is never asserted here."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from uuid import uuid4

import pytest

from bench import workloads
from bench.__main__ import main
from bench.core import sql_bytes, sql_text
from tests.support.databases import Database, Server
from tests.support.helpers import Conn, add_users, balance
from tests.support.security import acting, refused

BENCH_FUNCTIONS = ("debit_floor_function", "debit_contract_floor_function", "debit_cost_ladder")

WORKLOADS = ("1. backfill", "2. signup", "3. debit", "4. hot pool", "5. Python", "6. growth")
IDS = ("backfill", "backfill_cli", "backfill_cli_analyzed", "signup_batch", "signup_single",
       "signup_single_floor", "signup_single_vs_floor",
       "signup_single_contract_floor", "signup_single_vs_contract", "debit_c1", "debit_c8", "debit_c8_floor",
       "debit_c8_contract_floor", "debit_c8_vs_contract", "debit_c32", "debit_c32_floor",
       "debit_c32_contract_floor", "debit_c32_vs_contract", "debit_key_c8",
       "debit_key_c8_contract_floor", "debit_key_c8_vs_contract", "debit_ladder_function",
       "debit_ladder_result", "debit_ladder_definer", "debit_ladder_contract",
       "debit_ladder_package", "tpcb_c8", "python_sync",
       "python_async", "python_unprepared", "python_async_unprepared", "pool_c32", "growth_backfill_fn", "growth_backfill_cli", "growth_debit")


def _finite_positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
@pytest.mark.bench
def test_quick_bench_writes_every_workload(server: Server, tmp_path: Path) -> None:
    assert main(["--url", server.admin_url, "--quick", "--out", str(tmp_path)]) == 0

    data = json.loads((tmp_path / "results.json").read_text())
    markdown = (tmp_path / "results.md").read_text()
    results = {r["id"]: r for r in data["results"]}
    assert set(IDS) <= set(results)
    assert {r["workload"] for r in data["results"]} == set(WORKLOADS)
    for result in data["results"]:
        sides = [result["a"]] + ([result["b"]] if result["b"] is not None else [])
        for side in sides:
            assert len(side["samples"]) >= 3
            assert all(_finite_positive(v) for v in side["samples"])
            assert all(_finite_positive(side[k]) for k in ("median", "min", "max"))
            assert side["min"] <= side["median"] <= side["max"]
        if result["b"] is not None:
            assert _finite_positive(result["ratio"])
        assert result["name"] in markdown
    machine = data["machine"]
    assert machine["cpu_count"] >= 1 and machine["memory_bytes"] > 0
    assert {"fsync", "synchronous_commit"} <= set(machine["settings"])
    # Correctness facts the bench checks along the way (not speed).
    assert results["pool_c32"]["extra"] == {"overdrawn_accounts": 0, "integrity_problems": 0}
    assert data["facts"]["debit_integrity_problems"] == 0
    assert (tmp_path / "plans" / "debit_credits.txt").read_text().count("plan:") >= 1


def _install_bench_functions(conn: Conn) -> None:
    for script in BENCH_FUNCTIONS:
        conn.execute(sql_bytes(script), {})


def _without_account(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("log_id", "account_user_id")}


def _log_shape(conn: Conn, user_id: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT amount, type, source, description, actor_user_id, idempotency_key IS NOT NULL"
        " FROM credit_usage_log WHERE user_id = %s AND type = 'debit'", (user_id,)).fetchall()


def _keys(conn: Conn, user_id: str) -> list[tuple[Any, ...]]:
    """The user's idempotency keys, each with what its entry says (revision 0007)."""
    return conn.execute(
        "SELECT k.operation, k.idempotency_key, l.amount, l.type, k.remaining_credits,"
        " l.idempotency_key = k.idempotency_key, l.user_id = k.owner_user_id"
        " FROM credit_idempotency_keys k LEFT JOIN credit_usage_log l ON l.id = k.log_id"
        " WHERE k.owner_user_id = %s ORDER BY k.idempotency_key", (user_id,)).fetchall()


def _key_log_id(conn: Conn, user_id: str, key: str) -> Any:
    row = conn.execute("SELECT log_id FROM credit_idempotency_keys WHERE owner_user_id = %s"
                       " AND operation = 'debit' AND idempotency_key = %s",
                       (user_id, key)).fetchone()
    return None if row is None else row[0]


def _integrity_problems(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM verify_credit_integrity()").fetchall()


def _pgbench_sql(name: str, **values: int) -> bytes:
    """The statement of the pgbench script bench/<name>.sql with its variables set."""
    text = "\n".join(line for line in sql_text(name).splitlines()
                     if not line.startswith(("\\", "--")))
    for variable, value in values.items():
        text = re.sub(rf"(?<!:):{variable}\b", str(value), text)
    assert re.search(r"(?<!:):[a-z_]", text) is None, f"unset variable in {name}: {text}"
    return text.encode()


@pytest.mark.parametrize("floor", ["bench_debit_contract_floor", "bench_debit_ladder_result",
                                   "bench_debit_ladder_definer"])
def test_contract_floors_do_what_a_debit_does(conn: Conn, floor: str) -> None:
    """A floor that did less than debit_credits() would flatter the bench's ratios."""
    _install_bench_functions(conn)
    package_user, floor_user = add_users(conn, "member", "member")
    expected = conn.execute("SELECT debit_credits(%s, 7)", (package_user,)).fetchone()
    got = conn.execute(f"SELECT {floor}(%s, 7)", (floor_user,)).fetchone()
    assert expected is not None and got is not None
    assert _without_account(got[0]) == _without_account(expected[0])
    assert got[0]["account_user_id"] == floor_user
    assert balance(conn, floor_user) == balance(conn, package_user) == (350, 7, 343)
    assert _log_shape(conn, floor_user) == _log_shape(conn, package_user)
    # Refused like the package's hot path: nothing debited, no result.
    assert conn.execute(f"SELECT {floor}(%s, 400)", (floor_user,)).fetchone() == (None,)
    assert balance(conn, floor_user) == (350, 7, 343)
    assert _integrity_problems(conn) == []


def test_keyed_contract_floor_finds_an_earlier_entry(conn: Conn) -> None:
    _install_bench_functions(conn)
    package_user, floor_user = add_users(conn, "member", "member")
    expected = conn.execute("SELECT debit_credits(%s, 5, 'usage', NULL, 'k-1')",
                            (package_user,)).fetchone()
    got = conn.execute("SELECT bench_debit_key_contract_floor(%s, 5, 'k-1')",
                       (floor_user,)).fetchone()
    assert expected is not None and got is not None
    assert _without_account(got[0]) == _without_account(expected[0])
    assert _log_shape(conn, floor_user) == _log_shape(conn, package_user)
    # The key is stored where the package stores it, owned by the caller and
    # naming the entry the result names (revision 0007).
    assert _keys(conn, floor_user) == _keys(conn, package_user) == [
        ("debit", "k-1", -5, "debit", 345, True, True)]
    assert _key_log_id(conn, floor_user, "k-1") == got[0]["log_id"]
    # The same key again: the lookup finds the entry and nothing is spent twice
    # (the floor does not build the replayed result: the bench never replays).
    again = conn.execute("SELECT bench_debit_key_contract_floor(%s, 5, 'k-1')",
                         (floor_user,)).fetchone()
    assert again == (None,)
    assert balance(conn, floor_user) == (350, 5, 345)
    assert len(_keys(conn, floor_user)) == 1
    assert _integrity_problems(conn) == []


DEBIT_SCRIPTS = ("pgbench_debit", "pgbench_debit_bare", "pgbench_debit_floor",
                 "pgbench_debit_contract_floor", "pgbench_debit_key", "pgbench_debit_key_bare",
                 "pgbench_debit_key_contract_floor")


@pytest.mark.parametrize("script", DEBIT_SCRIPTS)
def test_debit_scripts_write_what_a_debit_writes(conn: Conn, script: str) -> None:
    """Every side of workload 3 (package, bare, floors; keyed or not) leaves the rows
    debit_credits() leaves: the balance, the log row and, keyed, the caller's key row."""
    _install_bench_functions(conn)
    package_user, script_user = add_users(conn, "member", "member")
    conn.execute("CREATE TABLE bench_ids AS SELECT 1 AS n, %s::uuid AS id", (script_user,))
    keyed = "_key" in script
    key = "3-7" if keyed else None
    conn.execute("SELECT debit_credits(%s, 1, 'usage', NULL, %s)", (package_user, key))
    conn.execute(_pgbench_sql(script, accounts=1, n=1, k=7, client_id=3))
    assert balance(conn, script_user) == balance(conn, package_user) == (350, 1, 349)
    assert _log_shape(conn, script_user) == _log_shape(conn, package_user)
    assert _keys(conn, script_user) == _keys(conn, package_user) == (
        [("debit", key, -1, "debit", 349, True, True)] if keyed else [])
    assert _integrity_problems(conn) == []


@pytest.mark.parametrize("floor", ["bench_debit_contract_floor(%s, 1)",
                                   "bench_debit_key_contract_floor(%s, 1, 'k')"])
def test_contract_floors_keep_the_permission_check(conn: Conn, floor: str) -> None:
    _install_bench_functions(conn)
    me, other = add_users(conn, "member", "member")
    with acting(conn, "credits_user", me):
        refused(conn, f"SELECT {floor}", (other,))
        assert conn.execute(f"SELECT {floor}", (me,)).fetchone() is not None
    assert balance(conn, other) == (350, 0, 350)
    assert balance(conn, me) == (350, 1, 349)


def test_cost_ladder_rungs_each_debit_once(conn: Conn) -> None:
    """Every rung of the ladder does the same durable work: one debit, one log row."""
    _install_bench_functions(conn)
    add_users(conn, *["member"] * 4)
    conn.execute("CREATE TABLE bench_ids AS SELECT row_number() OVER (ORDER BY user_id)::int"
                 " AS n, user_id AS id FROM user_credits")
    rungs = ("bare", "function", "result", "definer", "contract", "package")
    for rung in rungs:
        row = conn.execute("CALL bench_debit_ladder(%s, 3, 4)", (rung,)).fetchone()
        assert row is not None and row[0] > 0
    spent = conn.execute("SELECT sum(used_credits) FROM user_credits").fetchone()
    logged = conn.execute("SELECT count(*) FROM credit_usage_log WHERE type = 'debit'").fetchone()
    assert spent == (3 * len(rungs),)
    assert logged == (3 * len(rungs),)


def test_signup_contract_floor_writes_what_the_trigger_writes(
        server: Server, installed_template: Database) -> None:
    """Two copies, the package's trigger and the floor's: the same rows per role."""
    roles = ["member", "admin", "team_admin", "RecruitPro", "super_admin", None, "intern"]
    rows = []
    for floor in (False, True):
        database = server.create(template=installed_template.name)
        with database.connect() as conn:
            if floor:
                conn.execute(sql_bytes("signup_contract_floor_trigger"))
            conn.execute("INSERT INTO users (email, role) SELECT 'u' || i || '@x.invalid', r"
                         " FROM unnest(%s::text[]) WITH ORDINALITY AS t(r, i)", (roles,))
            rows.append(_accounts(conn, "%@x.invalid"))
            assert _integrity_problems(conn) == []
            # The INSERT triggers left enabled (bit 4 of tgtype: INSERT).
            triggers = conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'users'::regclass"
                                    " AND tgenabled <> 'D' AND NOT tgisinternal AND tgtype & 4 = 4").fetchall()
        server.drop(database)
        assert triggers == [("bench_signup_contract_floor" if floor else "users_allocate_credits",)]
    assert len(rows[0]) == len(roles)
    assert rows[1] == rows[0]


def _accounts(conn: Conn, emails: str) -> list[tuple[Any, ...]]:
    """Balance, log and lot rows of the users whose email is LIKE ``emails``, by email."""
    return conn.execute(
        "SELECT u.email, u.role, c.total_credits, c.used_credits, c.allocated_credits,"
        " l.amount, l.type, l.source, l.description, k.amount, k.source, k.expires_at"
        " FROM users u JOIN user_credits c ON c.user_id = u.id"
        " LEFT JOIN credit_usage_log l ON l.user_id = u.id AND l.id > c.opened_after_log_id"
        " LEFT JOIN credit_lots k ON k.log_id = l.id"
        " WHERE u.email LIKE %s ORDER BY u.email, l.id", (emails,)).fetchall()


SIGNUP_ROLES = 8
"""The scripts' role array: every configured role, NULL and the unknown 'intern'."""


def test_signup_baselines_write_what_the_trigger_writes(conn: Conn) -> None:
    """The bulk baseline and the one-statement signup floor leave, per user, the rows
    the package's trigger leaves (allocated_credits included). Each side runs in a
    transaction rolled back afterwards, so the next one starts from the same state."""
    def side(statement: bytes, params: dict[str, int] | None, trigger: bool
             ) -> list[tuple[Any, ...]]:
        with conn.transaction(force_rollback=True):
            if not trigger:
                conn.execute("ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
            conn.execute(statement, params)
            assert _integrity_problems(conn) == []
            return _accounts(conn, "%@bench.invalid")

    package = side(sql_bytes("signup_batch"), {"n": 2 * SIGNUP_ROLES}, True)
    assert len(package) == 2 * SIGNUP_ROLES
    assert side(sql_bytes("signup_batch_baseline"), {"n": 2 * SIGNUP_ROLES}, False) == package
    for r in range(1, SIGNUP_ROLES + 1):
        # The single-row scripts draw a random email: compare without it.
        single = side(_pgbench_sql("pgbench_signup", r=r), None, True)
        floor = side(_pgbench_sql("pgbench_signup_bare_ledger", r=r), None, False)
        assert len(single) == 1
        assert [row[1:] for row in floor] == [row[1:] for row in single]


def test_backfill_baseline_writes_what_the_backfill_writes(conn: Conn) -> None:
    """The bare backfill (without the package's FOR KEY SHARE lock, by choice: see its
    header) leaves the balance and log rows backfill_user_credits() leaves."""
    roles = ["member", "admin", "team_admin", "RecruitPro", "super_admin", None, "intern"]

    def waiting(prefix: str) -> None:
        with conn.transaction():
            conn.execute("ALTER TABLE users DISABLE TRIGGER users_allocate_credits")
            conn.execute("INSERT INTO users (email, role) SELECT %s || i || '@b.invalid', r"
                         " FROM unnest(%s::text[]) WITH ORDINALITY AS t(r, i)", (prefix, roles))
            conn.execute("ALTER TABLE users ENABLE TRIGGER users_allocate_credits")

    waiting("package-")
    conn.execute("SELECT backfill_user_credits()")
    waiting("bare-")
    conn.execute(sql_bytes("backfill_baseline"), {})
    package, bare = _accounts(conn, "package-%"), _accounts(conn, "bare-%")
    assert len(package) == len(roles)
    assert [row[1:] for row in bare] == [row[1:] for row in package]
    assert _integrity_problems(conn) == []


def test_python_rows_alternate_the_sides_block_by_block() -> None:
    """Workload 5 runs A and B in alternating blocks, first side swapped every block,
    and reports milliseconds per call of each side over the whole sequence."""
    order: list[str] = []
    context = cast(workloads.Context, SimpleNamespace(
        sizes=SimpleNamespace(short_reps=2), log=lambda _message: None))
    sequence = [uuid4() for _ in range(3 * workloads.PYTHON_BLOCK)]
    a, b = workloads._interleaved(context, sequence, ("A", lambda _u: order.append("A")),
                                  ("B", lambda _u: order.append("B")))
    block = workloads.PYTHON_BLOCK
    one_rep = (["A"] * block + ["B"] * block + ["B"] * block + ["A"] * block
               + ["A"] * block + ["B"] * block)
    assert order == one_rep * 2
    assert len(a.samples) == len(b.samples) == 2
    assert all(v > 0 for v in a.values + b.values)
