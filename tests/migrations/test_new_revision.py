"""scripts/new_revision.py: revisions written from sql/, checked against the landed ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from credits_db import migrate
from credits_db._resources import alembic_dir, sql_dir, sql_files
from scripts import manifest
from scripts.new_revision import function_statements
from scripts.sqltext import FunctionStatement, or_replace, split_statements
from tests.support.catalog import by_kind, difference, fingerprint, fingerprint_at
from tests.support.databases import Server

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = alembic_dir() / "versions"

# The files of sql/ revision 0007 changed (its section headers name them).
CHANGED_IN_0007 = [
    "004_user_credits.sql", "005_credit_usage_log.sql", "006_append_only_log.sql",
    "007_signup_allocation.sql", "008_backfill.sql", "009_allocation_report.sql",
    "010_team_credit_sharing.sql", "011_spending_log_columns.sql", "012_replayed_result.sql",
    "013_add_team_member.sql", "014_remove_team_member.sql", "015_debit_credits.sql",
    "016_grant_credits.sql", "017_refund_credits.sql", "018_get_credit_balance.sql",
    "019_role_change_topup.sql", "020_verify_credit_integrity.sql", "022_current_user_id.sql",
    "023_row_level_security.sql", "024_grants.sql",
]
# The commits that landed revisions 0006 and 0007, for sql/ as it was then.
COMMIT_0006 = "0dcf6de"
COMMIT_0007 = "ea0bfe0"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m scripts.new_revision`` from the repository."""
    return subprocess.run([sys.executable, "-m", "scripts.new_revision", *args], cwd=ROOT,
                          capture_output=True, text=True, check=False)


def landed_before(revision: str, target: Path) -> Path:
    """A copy of alembic/versions holding the revisions before ``revision``, with their FROZEN."""
    target.mkdir()
    names = [p.name for p in VERSIONS.iterdir() if p.suffix in (".py", ".sql")
             and p.name[:4] < revision]
    for name in names:
        shutil.copy(VERSIONS / name, target / name)
    manifest.record(target, names)
    return target


def by_signature(path: Path, kind: str) -> dict[str, str]:
    """Signature to statement text (CREATE as CREATE OR REPLACE) of one kind of statement."""
    found: dict[str, str] = {}
    for statement in function_statements(path):
        if statement.kind == kind:
            for signature in statement.signatures:
                found[str(signature.signature)] = _text(statement)
    return found


def statements(path: Path, kind: str) -> set[tuple[str, str]]:
    """(signature, statement text) of every statement of one kind, for each function it names."""
    return {(str(signature.signature), _text(statement))
            for statement in function_statements(path) if statement.kind == kind
            for signature in statement.signatures}


def _text(statement: FunctionStatement) -> str:
    return or_replace(statement) if statement.kind == "create" else statement.statement.text


def git_sql_at(commit: str, target: Path) -> Path:
    """sql/ as of ``commit`` (skips the test without git or without that commit)."""
    git = shutil.which("git")
    if git is None or subprocess.run([git, "-C", str(ROOT), "cat-file", "-e", commit],
                                     capture_output=True, check=False).returncode != 0:
        pytest.skip(f"needs the git history with commit {commit}")
    archive = subprocess.run([git, "-C", str(ROOT), "archive", commit, "sql"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "sql"


@pytest.fixture
def regenerated_0007(tmp_path: Path) -> Path:
    """Revision 0007 written by the script from sql/ as it landed, onto 0001-0006."""
    sql_then = git_sql_at(COMMIT_0007, tmp_path)
    versions = landed_before("0007", tmp_path / "versions")
    result = run_script("--versions", str(versions), "new", "0007", "ledger_cannot_be_fooled",
                        *CHANGED_IN_0007, "--sql", str(sql_then))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout, result.stdout
    return versions


def test_0007_regenerated_has_the_landed_function_definitions(regenerated_0007: Path) -> None:
    generated = regenerated_0007 / "0007_ledger_cannot_be_fooled.sql"
    landed = VERSIONS / "0007_ledger_cannot_be_fooled.sql"
    for kind in ("create", "comment", "drop"):
        assert by_signature(generated, kind) == by_signature(landed, kind), kind
    # A GRANT in 024 is the author's (the DDL section after the functions): a subset.
    assert statements(generated, "privilege") <= statements(landed, "privilege")
    assert not manifest.compare(regenerated_0007), "the three files are entered in FROZEN"


def test_0007_regenerated_down_restores_the_functions_as_the_landed_down_does(
        server: Server, regenerated_0007: Path) -> None:
    script = server.create()
    landed = server.create()
    try:
        for database in (script, landed):
            migrate.upgrade(database.url, "0007")
        with script.connect() as conn:
            down = regenerated_0007 / "0007_ledger_cannot_be_fooled_down.sql"
            conn.execute(down.read_text(encoding="utf-8").encode())
            by_script = by_kind(fingerprint(conn), "function")
        migrate.downgrade(landed.url, "0006")
        by_landed = by_kind(fingerprint_at(landed.url), "function")
        assert by_script == by_landed, difference(by_landed, by_script)
    finally:
        server.drop(script)
        server.drop(landed)


def test_0006_regenerated_from_sql_as_it_landed(tmp_path: Path) -> None:
    sql_then = git_sql_at(COMMIT_0006, tmp_path)
    versions = landed_before("0006", tmp_path / "versions")
    result = run_script("--versions", str(versions), "new", "0006", "debit_fewer_conditions",
                        "015_debit_credits.sql", "--sql", str(sql_then), "--date", "2026-11-24",
                        "--message", "Debit: fewer PL/pgSQL conditions on the keyed and pool paths")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout, result.stdout
    stem = "0006_debit_fewer_conditions"
    assert (versions / f"{stem}.py").read_bytes() == (VERSIONS / f"{stem}.py").read_bytes()
    assert by_signature(versions / f"{stem}.sql", "create") == by_signature(
        VERSIONS / f"{stem}.sql", "create")
    debit = "debit_credits(uuid, integer, text, text, text)"
    restored = by_signature(versions / f"{stem}_down.sql", "create")
    assert restored == by_signature(VERSIONS / f"{stem}_down.sql", "create")
    assert restored[debit] == by_signature(
        VERSIONS / "0005_debit_one_statement_per_path.sql", "create")[debit]
    assert by_signature(versions / f"{stem}_down.sql", "comment") == {
        debit: by_signature(VERSIONS / "0003_security.sql", "comment")[debit]}


MINI_0001 = """\
CREATE FUNCTION kept(p_x integer) RETURNS integer LANGUAGE sql AS $$ SELECT p_x; $$;
CREATE FUNCTION changed(p_x integer) RETURNS integer LANGUAGE plpgsql
SET search_path = pg_catalog
AS $body$ BEGIN RETURN p_x; END $body$;
COMMENT ON FUNCTION changed(integer) IS 'one';
CREATE FUNCTION credits_internal.gone(p_x int4, OUT y text) LANGUAGE sql AS $$ SELECT 'x;y' $$;
REVOKE EXECUTE ON FUNCTION kept(integer), changed(integer), credits_internal.gone(integer)
    FROM PUBLIC;
"""
MINI_0002 = """\
ALTER FUNCTION changed(integer) SET search_path = pg_catalog, pg_temp;
"""
MINI_SQL = """\
-- a comment; with a semicolon
CREATE FUNCTION kept(p_x integer) RETURNS integer LANGUAGE sql AS $$ SELECT p_x; $$;
CREATE FUNCTION changed(p_x integer) RETURNS integer LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $body$ BEGIN RETURN p_x + 1; END $body$;
REVOKE EXECUTE ON FUNCTION changed(integer) FROM PUBLIC;
COMMENT ON FUNCTION changed(integer) IS 'two; ''quoted''';
CREATE FUNCTION credits_internal.added(p_x integer) RETURNS text LANGUAGE sql
BEGIN ATOMIC
    SELECT CASE WHEN p_x > 0 THEN 'positive' ELSE 'not; positive' END;
END;
REVOKE EXECUTE ON FUNCTION credits_internal.added(integer) FROM PUBLIC;
CREATE FUNCTION credits_internal.open() RETURNS integer LANGUAGE sql RETURN 1;
"""


def _mini_revision(versions: Path, revision: str, down: str | None, sql: str) -> None:
    stem = f"{revision}_r{revision}"
    (versions / f"{stem}.py").write_text(
        f'revision = "{revision}"\ndown_revision = {down!r}\n', encoding="utf-8")
    (versions / f"{stem}.sql").write_text(sql, encoding="utf-8")
    (versions / f"{stem}_down.sql").write_text("SELECT 1;\n", encoding="utf-8")


@pytest.fixture
def mini(tmp_path: Path) -> tuple[Path, Path]:
    """A two-revision history and a sql/ that changes one function, adds two, drops one."""
    versions, sql = tmp_path / "versions", tmp_path / "sql"
    versions.mkdir()
    sql.mkdir()
    _mini_revision(versions, "0001", None, MINI_0001)
    _mini_revision(versions, "0002", "0001", MINI_0002)
    manifest.record(versions, manifest.revision_files(versions))
    (sql / "001_mini.sql").write_text(MINI_SQL, encoding="utf-8")
    return versions, sql


def test_new_changed_dropped_and_unchanged_functions(mini: tuple[Path, Path]) -> None:
    versions, sql = mini
    result = run_script("--versions", str(versions), "new", "0003", "mini", "001_mini.sql",
                        "--sql", str(sql))
    assert result.returncode == 0, result.stderr
    assert "unchanged, left out: kept(integer)" in result.stdout
    up = by_signature(versions / "0003_mini.sql", "create")
    assert set(up) == {"changed(integer)", "credits_internal.added(integer)", "credits_internal.open()"}
    assert "END;\n" in up["credits_internal.added(integer)"] and "RETURN 1;" in up["credits_internal.open()"]
    assert set(by_signature(versions / "0003_mini.sql", "drop")) == {"credits_internal.gone(integer)"}
    text = (versions / "0003_mini.sql").read_text()
    assert "-- REVIEW: a new function without REVOKE" in text  # credits_internal.open()
    down = " ".join((versions / "0003_mini_down.sql").read_text().split())
    restored = by_signature(versions / "0003_mini_down.sql", "create")
    assert "RETURN p_x; END" in restored["changed(integer)"]
    assert "ALTER FUNCTION changed(integer) SET search_path = pg_catalog, pg_temp;" in down
    assert "COMMENT ON FUNCTION changed(integer) IS 'one';" in down
    assert "REVOKE EXECUTE ON FUNCTION credits_internal.gone(integer) FROM PUBLIC;" in down
    assert set(by_signature(versions / "0003_mini_down.sql", "drop")) == {
        "credits_internal.added(integer)", "credits_internal.open()"}
    assert down.index("DROP FUNCTION credits_internal.open()") < down.index("DROP FUNCTION credits_internal.added")


def test_mini_revision_up_then_down_restores_the_catalog(server: Server,
                                                         mini: tuple[Path, Path]) -> None:
    versions, sql = mini
    assert run_script("--versions", str(versions), "new", "0003", "mini", "001_mini.sql",
                      "--sql", str(sql)).returncode == 0
    database = server.create()
    try:
        with database.connect() as conn:
            conn.execute("CREATE SCHEMA credits_internal")
            for name in ("0001_r0001.sql", "0002_r0002.sql"):
                conn.execute((versions / name).read_text().encode())
            before = fingerprint(conn)
            conn.execute((versions / "0003_mini.sql").read_text().encode())
            assert conn.execute("SELECT credits_internal.added(-1), changed(1)").fetchone() == (
                "not; positive", 2)
            conn.execute((versions / "0003_mini_down.sql").read_text().encode())
            after = fingerprint(conn)
        assert after == before, difference(before, after)
    finally:
        server.drop(database)


def test_refreeze_enters_the_edited_files(mini: tuple[Path, Path]) -> None:
    versions, sql = mini
    assert run_script("--versions", str(versions), "new", "0003", "mini", "001_mini.sql",
                      "--sql", str(sql)).returncode == 0
    with (versions / "0003_mini.sql").open("a") as edited:
        edited.write("-- the author's DDL\n")
    assert manifest.compare(versions).changed == ["0003_mini.sql"]
    result = run_script("--versions", str(versions), "refreeze", "0003")
    assert result.returncode == 0, result.stderr
    assert not manifest.compare(versions)


@pytest.mark.parametrize(("args", "complaint"), [
    (["0002", "again", "001_mini.sql"], "exists already"),
    (["0003", "Bad-Slug", "001_mini.sql"], "lower_case_words"),
    (["3", "short", "001_mini.sql"], "four digits"),
    (["0003", "nothing", "999_none.sql"], "999_none.sql"),
])
def test_refuses_what_it_cannot_write(mini: tuple[Path, Path], args: list[str],
                                      complaint: str) -> None:
    versions, sql = mini
    result = run_script("--versions", str(versions), "new", *args, "--sql", str(sql))
    assert result.returncode == 1 and complaint in result.stderr
    assert not list(versions.glob("0003_*"))


def test_split_statements_run_one_by_one_install_what_sql_installs(server: Server) -> None:
    whole, split = server.create(), server.create()
    try:
        with whole.connect() as conn:
            for path in sql_files():
                conn.execute(path.read_text(encoding="utf-8").encode())
        with split.connect() as conn:
            for path in sql_files():
                for statement in split_statements(path.read_text(encoding="utf-8")):
                    conn.execute(statement.text.encode())
        expected, actual = fingerprint_at(whole.url), fingerprint_at(split.url)
        assert actual == expected, difference(expected, actual)
    finally:
        server.drop(whole)
        server.drop(split)


def test_a_privilege_the_landed_revisions_never_set_is_for_the_author(tmp_path: Path) -> None:
    versions, sql = tmp_path / "versions", tmp_path / "sql"
    versions.mkdir()
    sql.mkdir()
    _mini_revision(versions, "0001", None,
                   "CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1;\n")
    (sql / "001_f.sql").write_text("CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 2;\n"
                                   "REVOKE EXECUTE ON FUNCTION f() FROM PUBLIC;\n")
    assert run_script("--versions", str(versions), "new", "0002", "f", "001_f.sql",
                      "--sql", str(sql)).returncode == 0
    down = " ".join((versions / "0002_f_down.sql").read_text().split())
    assert "-- REVIEW: the upgrade runs REVOKE EXECUTE ON FUNCTION f() FROM PUBLIC, which" in down


def test_a_changed_file_left_off_the_list_is_reported(tmp_path: Path) -> None:
    versions, sql = tmp_path / "versions", tmp_path / "sql"
    versions.mkdir()
    sql.mkdir()
    _mini_revision(versions, "0001", None,
                   "CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1;\n"
                   "CREATE FUNCTION g() RETURNS int LANGUAGE sql RETURN 1;\n")
    (sql / "001_f.sql").write_text("CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 2;\n")
    (sql / "002_g.sql").write_text("CREATE FUNCTION g() RETURNS int LANGUAGE sql RETURN 2;\n")
    result = run_script("--versions", str(versions), "new", "0002", "f", "001_f.sql",
                        "--sql", str(sql))
    assert result.returncode == 0, result.stderr
    assert "warning: sql/002_g.sql defines g() differently" in result.stdout
    upgrade = " ".join((versions / "0002_f.sql").read_text().split())
    assert "-- REVIEW: sql/002_g.sql defines g() differently" in upgrade
    assert set(by_signature(versions / "0002_f.sql", "create")) == {"f()"}


def test_functions_moved_by_0008_are_unchanged_in_sql(tmp_path: Path) -> None:
    # 0008 moved and renamed them by ALTER FUNCTION; sql/ defines them under the
    # new names. A revision from their files must find nothing to write.
    versions = landed_before("9999", tmp_path / "versions")
    files = ["006_append_only_log.sql", "007_signup_allocation.sql", "008_backfill.sql",
             "019_role_change_topup.sql"]
    result = run_script("--versions", str(versions), "new", "0900", "probe", *files,
                        "--sql", str(sql_dir()))
    assert result.returncode == 0, result.stderr
    for moved in ("credits_internal.refuse_log_change()", "credits_internal.allocate_on_signup()",
                  "credits_internal.backfill(boolean, integer, boolean, uuid)",
                  "credits_internal.topup_on_role_change()",
                  "backfill_user_credits(boolean, integer)"):
        assert f"unchanged, left out: {moved}" in result.stdout, result.stdout
    assert "warning" not in result.stdout, result.stdout
