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
from bench.__main__ import main, parse
from bench.core import WORKLOADS as WORKLOADS_RUN
from bench.core import sql_bytes, sql_text
from bench.server import execute_script
from tests.support.databases import Database, Server
from tests.support.helpers import Conn, add_users, balance
from tests.support.security import acting, refused

BENCH_FUNCTIONS = ("debit_floor_function", "debit_contract_floor_function", "debit_cost_ladder",
                   "debit_0009_function", "debit_interleaved")

WORKLOADS = ("1. backfill", "2. signup", "3. debit", "4. hot pool", "5. Python", "6. growth",
             "7. lots", "8. renewal")
IDS = ("backfill", "backfill_cli", "backfill_cli_analyzed", "signup_batch", "signup_single",
       "signup_single_floor", "signup_single_vs_floor",
       "signup_single_contract_floor", "signup_single_vs_contract", "debit_c1", "debit_c8", "debit_c8_floor",
       "debit_c8_contract_floor", "debit_c8_vs_contract", "debit_c32", "debit_c32_floor",
       "debit_c32_contract_floor", "debit_c32_vs_contract", "debit_key_c8",
       "debit_key_c8_contract_floor", "debit_key_c8_vs_contract", "debit_ladder_function",
       "debit_ladder_result", "debit_ladder_definer", "debit_ladder_contract",
       "debit_ladder_package", "tpcb_c8", "python_sync",
       "python_async", "python_unprepared", "python_async_unprepared", "pool_c32", "growth_backfill_fn", "growth_backfill_cli", "growth_debit",
       "lots_untracked_c8", "lots_untracked_schema_c8", "lots_untracked_session", "lot_one", "lot_one_statement",
       "lot_one_vs_statement", "lot_span", "lot_span_statement", "lot_span_vs_statement",
       "lot_span_contract_floor", "lot_span_contract_floor_hot", "lot_span_vs_contract_floor",
       "expire", "expire_growth", "renew", "renew_1000", "renew_growth")


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
    # Workload 7: every side left the same rows, and the ledger held.
    for row in ("lot_span", "expire", "expire_1000"):
        assert any(note.startswith("same rows written by every side")
                   for note in results[row]["notes"])
    assert results["lot_span"]["a"]["extra"]["integrity_problems"] == [0, 0, 0]
    assert results["lot_span_contract_floor"]["a"]["extra"]["integrity_problems"] == [0, 0, 0]
    expire_facts = data["facts"]["expire"]
    assert {size["setup_integrity_problems"] for size in expire_facts.values()} == {0}
    assert expire_facts["1000"]["integrity_problems_after_bare_and_function"] == [0, 0]
    assert {n for size in expire_facts.values() for n in size["accounts_skipped"]} == {0}
    assert data["facts"]["lots_untracked_integrity_problems"] == 0
    assert data["facts"]["lots_untracked_0009_integrity_problems"] == 0
    assert data["facts"]["lot_one_integrity_problems"] == 0
    # Workload 8: both sides of the renewal left the same rows, and the ledger held.
    for row in ("renew", "renew_1000"):
        assert any(note.startswith("same rows written by every side")
                   for note in results[row]["notes"])
    renew_facts = data["facts"]["renewal"]
    assert {size["setup_integrity_problems"] for size in renew_facts.values()} == {0}
    assert renew_facts["1000"]["integrity_problems_after_bare_and_function"] == [0, 0]
    assert {n for size in renew_facts.values() for n in size["accounts_skipped"]} == {0}
    assert renew_facts["5000"]["accounts_renewed"] == [5000, 5000, 5000]
    for plan in ("debit_credits_one_lot", "debit_credits_lot_span", "expire_credits",
                 "renew_allowances"):
        assert (tmp_path / "plans" / f"{plan}.txt").read_text().count("plan:") >= 1


@pytest.mark.slow
@pytest.mark.bench
def test_only_runs_the_named_workloads(server: Server, tmp_path: Path) -> None:
    """--only pool: the pool rows alone, and the table says the run was partial."""
    assert main(["--url", server.admin_url, "--quick", "--only", "pool",
                 "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["workloads"] == ["pool"]
    assert [r["id"] for r in data["results"]] == ["pool_c32"]
    assert "Partial run (--only): workloads pool only." in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(("argv", "message"), [
    (["--only", "lots"], "--only needs --out"),
    (["--only", "python", "--out", "x"], "--only python needs debit too"),
    (["--only", "lots,nope", "--out", "x"], "unknown workload(s) nope"),
    (["--only", ",", "--out", "x"], "unknown workload(s) (none)"),
])
def test_only_refuses_what_it_cannot_run(argv: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_only_keeps_the_run_order() -> None:
    args = parse(["--only", "lots, debit,python", "--out", "x"])
    assert args.only == ("debit", "python", "lots")
    assert parse([]).only == WORKLOADS_RUN


def _install_bench_functions(conn: Conn) -> None:
    # Without parameters: the copy of 0009's debit keeps its RAISE formats' bare %.
    for script in BENCH_FUNCTIONS:
        conn.execute(sql_bytes(script))


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
                 "pgbench_debit_key_contract_floor", "pgbench_debit_0009")


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
    rungs = ("bare", "function", "result", "definer", "contract", "package", "0009")
    for rung in rungs:
        row = conn.execute("CALL bench_debit_ladder(%s, 3, 4)", (rung,)).fetchone()
        assert row is not None and row[0] > 0
    spent = conn.execute("SELECT sum(used_credits) FROM user_credits").fetchone()
    logged = conn.execute("SELECT count(*) FROM credit_usage_log WHERE type = 'debit'").fetchone()
    assert spent == (3 * len(rungs),)
    assert logged == (3 * len(rungs),)


def test_interleaved_session_debits_each_side_as_often(conn: Conn) -> None:
    """The one-session row of workload 7 runs p_calls debits through each of the two
    functions (committed one by one) and reports a time per call for each."""
    _install_bench_functions(conn)
    add_users(conn, *["member"] * 4)
    conn.execute("CREATE TABLE bench_ids AS SELECT row_number() OVER (ORDER BY user_id)::int"
                 " AS n, user_id AS id FROM user_credits")
    row = conn.execute("CALL bench_debit_interleaved(6, 4, 2)").fetchone()
    assert row is not None and row[0] > 0 and row[1] > 0
    assert conn.execute("SELECT count(*), sum(-amount) FROM credit_usage_log"
                        " WHERE type = 'debit'").fetchone() == (12, 12)
    assert _integrity_problems(conn) == []


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


def test_debit_0009_is_revision_0009s_debit_credits() -> None:
    """The bench's "today's debit" is the text revision 0010's downgrade restores,
    but for its name."""
    down = (Path(__file__).resolve().parents[2] / "alembic" / "versions"
            / "0010_credit_lots_down.sql").read_text()
    restored = re.search(r"CREATE OR REPLACE FUNCTION debit_credits\((.*?\n\$\$;)", down, re.S)
    copy = re.search(r"CREATE FUNCTION bench_debit_credits_0009\((.*?\n\$\$;)",
                     sql_text("debit_0009_function"), re.S)
    assert restored is not None and copy is not None
    assert copy.group(1) == restored.group(1)


def _lot_rows(conn: Conn, user_id: str) -> list[tuple[Any, ...]]:
    """The account's lots in spending order, without ids (two accounts compare)."""
    return conn.execute(
        "SELECT source, amount, taken, expired, expires_at, priority, tracked,"
        " (SELECT array_agg(t.amount ORDER BY t.log_id) FROM credit_lot_takes t"
        "  WHERE t.lot_id = l.id)"
        " FROM credit_lots l WHERE user_id = %s"
        " ORDER BY priority, expires_at NULLS LAST, id", (user_id,)).fetchall()


def _balance_row(conn: Conn, user_id: str) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT total_credits, used_credits, remaining_credits, tracked_credits,"
        " allocated_credits FROM user_credits WHERE user_id = %s", (user_id,)).fetchone()


def _n(conn: Conn, user_id: str) -> int:
    row = conn.execute("SELECT n FROM bench_ids WHERE id = %s", (user_id,)).fetchone()
    assert row is not None
    return int(row[0])


LOT_SCRIPTS = [("lots_grant_one", 1, script)
               for script in ("pgbench_lot_one_bare", "pgbench_lot_one_statement")] + [
               ("lots_grant_five", 2, script)
               for script in ("pgbench_lot_span", "pgbench_lot_span_bare",
                              "pgbench_lot_span_statement", "pgbench_lot_span_floor",
                              "pgbench_lot_span_floor_hot")]


@pytest.mark.parametrize(("grants", "amount", "script"), LOT_SCRIPTS)
def test_lot_scripts_write_what_a_lot_debit_writes(conn: Conn, grants: str, amount: int,
                                                   script: str) -> None:
    """Each side of the lot-debit rows leaves what debit_credits() leaves on an
    account with the same lots: the balance (tracked_credits too), every lot's
    taken and takes, the entry; and the debit spans the lots it says it does."""
    package_user, script_user = add_users(conn, "member", "member")
    conn.execute(sql_bytes(grants))
    execute_script(conn, "bench_lot_ids")
    if script.startswith("pgbench_lot_span_floor"):
        conn.execute(sql_bytes("debit_lot_span_floor_function"))
    before = _lot_rows(conn, package_user)
    assert before == _lot_rows(conn, script_user)
    conn.execute("SELECT debit_credits(%s, %s)", (package_user, amount))
    n = _n(conn, script_user)
    # The walking scripts number the accounts by (k - 1) * clients + client_id + 1.
    conn.execute(_pgbench_sql(script, accounts=n, n=n, k=1, clients=1, client_id=n - 1))
    after = _lot_rows(conn, package_user)
    assert _lot_rows(conn, script_user) == after
    assert _balance_row(conn, script_user) == _balance_row(conn, package_user)
    assert _log_shape(conn, script_user) == _log_shape(conn, package_user)
    takes = [row[7] for row in after if row[7] is not None]
    assert takes == ([[1]] if amount == 1 else [[1], [1]])
    if amount == 2:
        # Two of five tracked lots, the soonest emptied; the untracked lot untouched.
        assert [row[2] for row in after] == [1, 1, 0, 0, 0, 0]
        assert [row[1] for row in after] == [1, 10, 10, 10, 10, 350]
    assert _integrity_problems(conn) == []


def test_lot_ids_name_the_lots_a_debit_spends_first(conn: Conn) -> None:
    """bench_ids.lot1, lot2 (what the bare scripts write to) are the first two lots
    of the account's spending order."""
    (user,) = add_users(conn, "member")
    conn.execute(sql_bytes("lots_grant_five"))
    execute_script(conn, "bench_lot_ids")
    lots = conn.execute("SELECT lot1, lot2 FROM bench_ids WHERE id = %s", (user,)).fetchone()
    order = conn.execute(
        "SELECT lot_id FROM jsonb_to_recordset(get_credit_lots(%s)) AS x(lot_id bigint)",
        (user,)).fetchall()
    assert lots is not None and list(lots) == [order[0][0], order[1][0]]


def _expiry_rows(conn: Conn) -> dict[str, Any]:
    """Everything a sweep may write, in a form two sweeps of one state compare by."""
    return {
        "entries": conn.execute(
            "SELECT user_id, actor_user_id, amount, type, source, description,"
            " idempotency_key, lot_id FROM credit_usage_log WHERE type = 'expire'"
            " ORDER BY id").fetchall(),
        "lots": conn.execute("SELECT id, taken, expired FROM credit_lots ORDER BY id").fetchall(),
        "balances": conn.execute(
            "SELECT user_id, total_credits, used_credits, tracked_credits, allocated_credits"
            " FROM user_credits ORDER BY user_id").fetchall(),
        "takes": conn.execute("SELECT count(*) FROM credit_lot_takes").fetchone(),
        "integrity": _integrity_problems(conn),
    }


def test_bulk_lots_are_granted_lots(conn: Conn) -> None:
    """bench/lots_expiring.sql writes, per account, what grant_credits() with the same
    amounts and expiries writes: the entries, the lots and the balance."""
    (bulk_user,) = add_users(conn, "member")
    conn.execute(sql_bytes("lots_expiring"), {"per_account": 3})
    (granted_user,) = add_users(conn, "member")
    lots = conn.execute("SELECT amount, expires_at FROM credit_lots"
                        " WHERE user_id = %s AND tracked ORDER BY id", (bulk_user,)).fetchall()
    assert [amount for amount, _ in lots] == [11, 12, 13]
    for amount, expires_at in lots:
        conn.execute("SELECT grant_credits(%s, %s, 'promo', NULL, NULL, %s)",
                     (granted_user, amount, expires_at))

    def account(user_id: str) -> tuple[Any, ...]:
        entries = conn.execute(
            "SELECT amount, type, source, description, idempotency_key, actor_user_id"
            " FROM credit_usage_log WHERE user_id = %s ORDER BY id", (user_id,)).fetchall()
        return (_balance_row(conn, user_id), entries, _lot_rows(conn, user_id))

    assert account(bulk_user) == account(granted_user)
    assert _integrity_problems(conn) == []


def test_expire_baseline_writes_what_expire_credits_writes(conn: Conn) -> None:
    """The bare sweep and expire_credits() leave the same rows on one state (each in a
    transaction rolled back afterwards): the entries in the same order with the same
    descriptions, the lots' expired, the balances; due lots only."""
    add_users(conn, "member", "admin", None)
    conn.execute(sql_bytes("lots_expiring"), {"per_account": 4})
    # One lot partly spent, one not due by as_of: the sweep must get both right.
    (user,) = add_users(conn, "member")
    conn.execute("SELECT grant_credits(%s, 10, 'promo', NULL, NULL, now() + interval '1 hour')",
                 (user,))
    conn.execute("SELECT grant_credits(%s, 10, 'promo', NULL, NULL, now() + interval '9 days')",
                 (user,))
    conn.execute("SELECT debit_credits(%s, 3)", (user,))
    row = conn.execute("SELECT now() + interval '2 days'").fetchone()
    assert row is not None
    as_of = row[0]
    sides = []
    for name in ("expire_function", "expire_baseline"):
        with conn.transaction(force_rollback=True):
            conn.execute(sql_bytes(name), {"as_of": as_of})
            sides.append(_expiry_rows(conn))
    function, bare = sides
    assert bare == function
    assert len(function["entries"]) == 3 * 4 + 1
    # The partly spent lot expired what it held (10 - 3), the later one nothing.
    assert [e[2] for e in function["entries"] if str(e[0]) == user] == [-7]
    assert function["integrity"] == []
    assert conn.execute("SELECT count(*) FROM credit_usage_log WHERE type = 'expire'"
                        ).fetchone() == (0,)


def _renew_members(conn: Conn) -> None:
    conn.execute("UPDATE role_credits SET renewal_interval = %s::interval, rollover_cap = %s"
                 " WHERE role = 'member'", (workloads.RENEW_INTERVAL, workloads.ROLLOVER_CAP))


def _account_rows(conn: Conn, user_id: str) -> tuple[Any, ...]:
    """Balance (with the period), entries and lots of one account, without ids."""
    entries = conn.execute(
        "SELECT amount, type, source, description, idempotency_key, actor_user_id, lot_id"
        " IS NOT NULL FROM credit_usage_log WHERE user_id = %s ORDER BY id",
        (user_id,)).fetchall()
    period = conn.execute("SELECT period_ends_at - created_at, period_allowance"
                          " FROM user_credits WHERE user_id = %s", (user_id,)).fetchone()
    # The accounts were opened moments apart: their lots' expiries compare by period.
    lots = conn.execute(
        "SELECT l.source, l.amount, l.taken, l.expired, l.expires_at - c.created_at,"
        " l.priority, l.tracked, (SELECT array_agg(t.amount ORDER BY t.log_id)"
        "  FROM credit_lot_takes t WHERE t.lot_id = l.id)"
        " FROM credit_lots l JOIN user_credits c ON c.user_id = l.user_id"
        " WHERE l.user_id = %s ORDER BY l.id", (user_id,)).fetchall()
    return (_balance_row(conn, user_id), period, entries, lots)


def test_bulk_spend_is_what_debit_credits_writes(conn: Conn) -> None:
    """bench/renewal_spend.sql spends, per account, what debit_credits() with the same
    amount spends: the balance, the entry, the lot's taken and its take; by turns
    nothing, 100, all but 50 and all of the allowance."""
    _renew_members(conn)
    conn.execute(sql_bytes("renewal_users"), {"n": 4})
    conn.execute(sql_bytes("renewal_spend"), {})
    bulk = [str(row[0]) for row in conn.execute(
        "SELECT user_id FROM user_credits ORDER BY user_id").fetchall()]
    spent = [row[0] for row in conn.execute(
        "SELECT used_credits FROM user_credits ORDER BY user_id").fetchall()]
    assert spent == [100, 300, 350, 0]
    debited = add_users(conn, *["member"] * 4)
    for user_id, amount in zip(debited, spent, strict=True):
        if amount:
            conn.execute("SELECT debit_credits(%s, %s)", (user_id, amount))
    for bulk_user, debited_user in zip(bulk, debited, strict=True):
        assert _account_rows(conn, bulk_user) == _account_rows(conn, debited_user)
    assert _integrity_problems(conn) == []


def _renewal_rows(conn: Conn, mark: int) -> dict[str, Any]:
    """Everything a renewal may write, in a form two renewals of one state compare by:
    the entries after ``mark`` numbered from the first of them (the sides run one
    after the other on one sequence), the new lots by those numbers and without their
    ids (the function inserts them in a join's order)."""
    first = "(SELECT min(id) FROM credit_usage_log WHERE id > %(mark)s)"
    return {
        "entries": conn.execute(
            f"SELECT CASE WHEN id > %(mark)s THEN id - {first} ELSE id END, user_id,"
            " actor_user_id, amount, type, source, description, idempotency_key, lot_id"
            " FROM credit_usage_log ORDER BY id", {"mark": mark}).fetchall(),
        "lots": conn.execute(
            f"SELECT CASE WHEN log_id > %(mark)s THEN log_id - {first} ELSE log_id END,"
            " user_id, source, amount, taken, expired, expired_unspent, expires_at, priority,"
            " tracked, CASE WHEN log_id > %(mark)s THEN 0 ELSE id END"
            " FROM credit_lots ORDER BY log_id > %(mark)s, log_id", {"mark": mark}).fetchall(),
        "balances": conn.execute(
            "SELECT user_id, total_credits, used_credits, tracked_credits, allocated_credits,"
            " period_ends_at, period_allowance, created_at FROM user_credits"
            " ORDER BY user_id").fetchall(),
        "takes": conn.execute("SELECT count(*) FROM credit_lot_takes").fetchone(),
        "integrity": _integrity_problems(conn),
    }


@pytest.mark.parametrize("opened", [None, "2026-01-31 12:00+00"])
def test_renew_baseline_writes_what_renew_allowances_writes(conn: Conn,
                                                           opened: str | None) -> None:
    """The bare renewal and renew_allowances() leave the same rows on the bench's
    accounts (each in a transaction rolled back afterwards): the expire entries, the
    renewal and rollover entries in the same order with the same descriptions, their
    lots, the old lots' expired and expired_unspent, the balances and their periods;
    an account whose role does not renew untouched. Also for accounts opened on the
    31st, where the period after a short month ends on the 31st again (created_at +
    2 months, not period_ends_at + 1 month)."""
    _renew_members(conn)
    conn.execute(sql_bytes("renewal_users"), {"n": 8})
    conn.execute(sql_bytes("renewal_spend"), {})
    add_users(conn, "admin")
    if opened is not None:
        # Time passes, as the owner: the accounts were opened then.
        conn.execute("UPDATE user_credits SET created_at = %(t)s, period_ends_at ="
                     " (%(t)s::timestamptz AT TIME ZONE 'UTC' + interval '1 month')"
                     " AT TIME ZONE 'UTC' WHERE period_ends_at IS NOT NULL", {"t": opened})
        conn.execute("UPDATE credit_lots l SET expires_at = c.period_ends_at"
                     " FROM user_credits c WHERE c.user_id = l.user_id"
                     " AND l.expires_at IS NOT NULL")
    row = conn.execute("SELECT max(created_at) + %s::interval,"
                       " (SELECT count(*) FROM verify_credit_integrity())"
                       " FROM user_credits WHERE period_ends_at IS NOT NULL",
                       (workloads.RENEW_AHEAD,)).fetchone()
    assert row is not None and row[1] == 0
    as_of = row[0]
    mark = conn.execute("SELECT max(id) FROM credit_usage_log").fetchone()[0]  # type: ignore[index]
    sides = []
    for name in ("renew_function", "renew_baseline"):
        with conn.transaction(force_rollback=True):
            cursor = conn.execute(sql_bytes(name), {"as_of": as_of})
            if name == "renew_function":
                result = cursor.fetchone()
                assert result is not None
                assert (result[0]["accounts_renewed"], result[0]["accounts_skipped"]) == (8, 0)
            sides.append(_renewal_rows(conn, mark))
    function, bare = sides
    assert bare == function
    assert function["integrity"] == []
    new = [e for e in function["entries"] if e[4] == "expire" or e[5] in ("renewal", "rollover")]
    # 8 accounts by turns spent 100, all but 50, all, nothing: 6 expiries, then per
    # account its renewal and (but for the account that spent all) its rollover.
    assert [(e[4], e[5]) for e in new][:6] == [("expire", "expiry")] * 6
    assert sorted(-e[3] for e in new[:6]) == [50, 50, 250, 250, 350, 350]
    assert sorted(e[3] for e in new if e[5] == "rollover") == [50, 50, 100, 100, 100, 100]
    assert len([e for e in new if e[5] == "renewal"]) == 8
    if opened is not None:
        ends = {b[5] for b in function["balances"] if b[6] is not None}
        assert ends == {conn.execute("SELECT '2026-03-31 12:00+00'::timestamptz"
                                     ).fetchone()[0]}  # type: ignore[index]
    assert conn.execute("SELECT count(*) FROM credit_usage_log WHERE source = 'renewal'"
                        ).fetchone() == (0,)


def test_plans_keep_apart_statements_that_share_a_first_line(conn: Conn, tmp_path: Path) -> None:
    """expire_credits() runs two statements that both begin WITH due AS MATERIALIZED (:
    the plan file shows both; a statement run once per row is still shown once."""
    conn.execute("""
        CREATE FUNCTION two_plans() RETURNS integer LANGUAGE plpgsql AS $$
        DECLARE v integer;
        BEGIN
            WITH due AS MATERIALIZED (
                SELECT 1 AS a) SELECT a INTO v FROM due;
            WITH due AS MATERIALIZED (
                SELECT 2 AS a) SELECT a + v INTO v FROM due;
            RETURN v;
        END $$""")
    context = cast(workloads.Context, SimpleNamespace(plans_dir=tmp_path, facts={}))
    workloads.plan_statements(context, conn, "test", {"two": b"SELECT two_plans()"})
    text = (tmp_path / "two.txt").read_text()
    assert "SELECT 1 AS a" in text and "SELECT 2 AS a" in text
    assert "run 2 times" not in text


def test_plans_cut_long_lines_short(conn: Conn, tmp_path: Path) -> None:
    """A custom plan's array parameter (expire_credits() passes every lot id) is cut."""
    conn.execute("""
        CREATE FUNCTION many_ids(p_ids bigint[]) RETURNS bigint LANGUAGE plpgsql AS $$
        BEGIN
            RETURN (SELECT count(*) FROM generate_series(1, 3) g WHERE g = ANY (p_ids));
        END $$""")
    context = cast(workloads.Context, SimpleNamespace(plans_dir=tmp_path, facts={}))
    workloads.plan_statements(context, conn, "test", {
        "ids": b"SELECT many_ids(ARRAY(SELECT generate_series(1, 5000))::bigint[])"})
    lines = (tmp_path / "ids.txt").read_text().splitlines()
    assert max(len(line) for line in lines) < workloads.PLAN_LINE + 40
    assert any(line.endswith("characters)") for line in lines)


def test_sizes_and_candidates_need_out(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    """--renew-accounts and --expire-lots replace the mode's sizes, sorted; --apply-sql
    names existing files; each needs --out, so a changed run never replaces bench/."""
    args = parse(["--only", "renewal", "--renew-accounts", "1000000,10000", "--out", "x"])
    assert args.renew_accounts == (10_000, 1_000_000)
    assert parse(["--expire-lots", "5000", "--out", "x"]).expire_lots == (5000,)
    candidate = tmp_path / "candidate.sql"
    candidate.write_text("SELECT 1")
    assert parse(["--apply-sql", str(candidate), "--out", "x"]).apply_sql == [candidate]
    for argv, message in ((["--renew-accounts", "1000"], "--renew-accounts needs --out"),
                          (["--apply-sql", str(candidate)], "--apply-sql needs --out"),
                          (["--apply-sql", str(tmp_path / "nope.sql"), "--out", "x"],
                           "no such file"),
                          (["--renew-accounts", "0", "--out", "x"], "positive sizes")):
        with pytest.raises(SystemExit) as exit_info:
            parse(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.bench
def test_apply_sql_reaches_the_measured_side(server: Server, tmp_path: Path) -> None:
    """A candidate applied with --apply-sql is what the A side runs: a renew_allowances()
    replaced by one that raises makes the renewal row fail."""
    candidate = tmp_path / "candidate.sql"
    candidate.write_text(
        "CREATE OR REPLACE FUNCTION renew_allowances(p_as_of timestamptz DEFAULT now(),"
        " p_limit integer DEFAULT NULL) RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER"
        " SET search_path = pg_catalog, pg_temp"
        " AS $$ BEGIN RAISE EXCEPTION 'candidate ran' USING ERRCODE = 'P0001'; END $$")
    with pytest.raises(Exception, match="candidate ran"):
        main(["--url", server.admin_url, "--quick", "--only", "renewal",
              "--renew-accounts", "200", "--apply-sql", str(candidate),
              "--out", str(tmp_path / "out")])
