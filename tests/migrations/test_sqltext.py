"""scripts/sqltext.py: statements split as psql splits them, function signatures normalised."""

from __future__ import annotations

import pytest

from scripts.sqltext import (
    FunctionStatement,
    Signature,
    SqlTextError,
    altered_search_path,
    or_replace,
    read_function_statement,
    renamed,
    split_statements,
    with_search_path,
)


def texts(source: str) -> list[str]:
    return [s.text for s in split_statements(source)]


def function(source: str) -> FunctionStatement:
    (statement,) = split_statements(source)
    read = read_function_statement(statement)
    assert read is not None
    return read


@pytest.mark.parametrize(("source", "expected"), [
    ("SELECT 1; SELECT 2;", ["SELECT 1;", "SELECT 2;"]),
    ("-- a; b\nSELECT 'x;''y'; /* c; /* nested; */ d; */ SELECT 2;",
     ["SELECT 'x;''y';", "SELECT 2;"]),
    ("SELECT E'it\\'s; here'; SELECT 2;", ["SELECT E'it\\'s; here';", "SELECT 2;"]),
    ('SELECT 1 AS "a;b"; SELECT 2;', ['SELECT 1 AS "a;b";', "SELECT 2;"]),
    ("DO $do$ BEGIN PERFORM $$;$$; END $do$; SELECT 2;",
     ["DO $do$ BEGIN PERFORM $$;$$; END $do$;", "SELECT 2;"]),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1; SELECT 2;",
     ["CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1;", "SELECT 2;"]),
    ("CREATE OR REPLACE FUNCTION f(p int) RETURNS text LANGUAGE sql BEGIN ATOMIC"
     " SELECT CASE WHEN p > 0 THEN 'a;' ELSE 'b' END; SELECT 'c'; END; SELECT 2;",
     ["CREATE OR REPLACE FUNCTION f(p int) RETURNS text LANGUAGE sql BEGIN ATOMIC"
      " SELECT CASE WHEN p > 0 THEN 'a;' ELSE 'b' END; SELECT 'c'; END;", "SELECT 2;"]),
    # BEGIN outside a function definition is a transaction, not a block.
    ("BEGIN; SELECT 1; END;", ["BEGIN;", "SELECT 1;", "END;"]),
    ("SELECT $1::int, a$b$ FROM t; SELECT 2;", ["SELECT $1::int, a$b$ FROM t;", "SELECT 2;"]),
])
def test_statements_end_where_psql_ends_them(source: str, expected: list[str]) -> None:
    assert texts(source) == expected


@pytest.mark.parametrize("source", ["SELECT 'open;", "SELECT $x$ open;", "/* open", "SELECT 1"])
def test_unterminated_text_is_refused(source: str) -> None:
    with pytest.raises(SqlTextError):
        split_statements(source)


@pytest.mark.parametrize(("source", "kind", "signatures"), [
    ("CREATE FUNCTION credits_internal.replayed_result(p_entry public.credit_usage_log)"
     " RETURNS jsonb LANGUAGE sql AS $$ SELECT 1 $$;", "create",
     ["credits_internal.replayed_result(credit_usage_log)"]),
    ("CREATE FUNCTION f(IN a int4, OUT b text, double precision, VARIADIC c varchar(9)[]"
     " DEFAULT '{}', d timestamptz = now()) RETURNS record LANGUAGE sql AS $$ $$;", "create",
     ["f(integer, double precision, character varying[], timestamp with time zone)"]),
    ('COMMENT ON FUNCTION "Odd Name"(bool) IS NULL;', "comment", ['"Odd Name"(boolean)']),
    ("GRANT EXECUTE ON FUNCTION a(), s.b(uuid) TO x, y;", "privilege", ["a()", "s.b(uuid)"]),
    ("ALTER FUNCTION a(int) SET search_path = pg_catalog, pg_temp;", "alter", ["a(integer)"]),
    ("DROP FUNCTION IF EXISTS a(int), b() CASCADE;", "drop", ["a(integer)", "b()"]),
])
def test_function_statements_name_their_functions(source: str, kind: str,
                                                  signatures: list[str]) -> None:
    read = function(source)
    assert (read.kind, [str(s.signature) for s in read.signatures]) == (kind, signatures)


@pytest.mark.parametrize("source", [
    "GRANT SELECT ON user_credits TO x;", "REVOKE USAGE ON SCHEMA public FROM x;",
    "GRANT credits_user TO authenticated;", "CREATE TABLE f (a int);", "COMMENT ON TABLE f IS 'x';",
])
def test_other_statements_are_not_function_statements(source: str) -> None:
    (statement,) = split_statements(source)
    assert read_function_statement(statement) is None


def test_create_becomes_create_or_replace_and_takes_an_altered_search_path() -> None:
    create = function("CREATE FUNCTION f() RETURNS int\nLANGUAGE sql\n"
                      "SET search_path = pg_catalog, public\nRETURN 1;")
    assert or_replace(create).startswith("CREATE OR REPLACE FUNCTION f() RETURNS int\n")
    alter = function("ALTER FUNCTION f() SET search_path = pg_catalog, public, pg_temp;")
    value = altered_search_path(alter)
    assert value == "pg_catalog, public, pg_temp"
    assert with_search_path(create, value) == (
        "CREATE OR REPLACE FUNCTION f() RETURNS int\nLANGUAGE sql\n"
        "SET search_path = pg_catalog, public, pg_temp\nRETURN 1;")
    assert altered_search_path(function("ALTER FUNCTION f() OWNER TO x;")) is None
    renamed = function("ALTER FUNCTION f() RENAME TO g;")
    assert renamed.moves


def test_a_moved_function_is_named_as_a_file_written_after_the_move_names_it() -> None:
    create = function("CREATE FUNCTION credits_f(p integer) RETURNS int\nLANGUAGE sql\nRETURN p;")
    moved = renamed(create, Signature("credits_internal", "f", ("integer",)))
    assert moved.statement.text == (
        "CREATE FUNCTION credits_internal.f(p integer) RETURNS int\nLANGUAGE sql\nRETURN p;")
    assert moved.signatures[0].signature == Signature("credits_internal", "f", ("integer",))
    comment = function("COMMENT ON FUNCTION public.credits_f(integer) IS 'x';")
    assert renamed(comment, Signature("public", "g", ("integer",))).statement.text == (
        "COMMENT ON FUNCTION g(integer) IS 'x';")
