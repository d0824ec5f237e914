"""Hostile overloads in ``public`` capture no call made by credits-db's functions (issue 13, item 1).

A role that may CREATE in ``public`` (every role before PostgreSQL 15, and kept by
pg_upgrade) can plant there an overload that matches a call better than the
``pg_catalog`` function it was written for: ``public.pg_has_role(name, text, text)``
wins over ``pg_catalog.pg_has_role(name, name, text)`` for
``pg_has_role(<name>, 'credits_admin', 'MEMBER')`` (an untyped literal prefers
``text``), so a SECURITY DEFINER function would run the attacker's code as its
owner and take its answer.

The overloads are generated from the catalog, not from a hand list:

1. every function in ``public`` (the SECURITY DEFINER ones, and the invoker ones
   they call, such as ``credits_current_user_id``) is read back from ``pg_proc``;
   a PL/pgSQL or SQL body has no ``pg_depend`` entries, so its ``prosrc`` is
   tokenized (comments and literals stripped): every identifier followed by
   ``(``, qualified or not, is a call with the arity counted at the call site,
   every operator symbol an operator, every ``::type`` a type in use (a
   ``BEGIN ATOMIC`` body's dependencies come from ``pg_depend`` instead);
2. each call is looked up in ``pg_proc`` (``pg_catalog`` and ``public``), each
   operator in ``pg_operator``, and for every candidate signature overloads are
   planted with argument types a caller's arguments could match better: all
   ``text``; each single argument replaced by ``text`` or by a type that casts
   to it implicitly (``integer`` for ``bigint``, ``text`` for ``name``...); for
   ``"any"`` and polymorphic arguments every type in use; and all
   ``anycompatible``. Operators get the same treatment per operand. They are
   planted in ``public`` by a LOGIN role granted CREATE there, and again in
   the callers' own ``pg_temp`` (the one schema a ``credits_user`` can write);
3. every planted object records that it ran (a NOTICE, which no rollback takes
   back, and a row in a table the attacker owns) and answers what makes the
   attack succeed where it can (``true`` for a boolean, else the real
   function's answer).

Then every entry point runs as a realistic caller (a ``credits_user`` login, a
``credits_admin`` login, the owner doing signups, role changes and deletes), each
on a connection opened after the planting (a cached plan would hide a capture),
and the test asserts that no planted object ran, that every result is what it
would be without them, and that no call failed (an ambiguity, 42725, included).

Also here: an ``auth.uid()`` created by a non-owner is not believed, and the
install warns when PUBLIC may CREATE in ``public``.
"""

from __future__ import annotations

import itertools
import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql

from credits_db import migrate
from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, add_users_without_credits

MARKER = "credits-db-hostile-overload-ran"
MARKER_TABLE = "hostile_overload_ran"

# Enough to cover every function and operator the bodies use with several
# looser signatures each; far below it, the generator found nothing to plant.
MIN_PLANTED = 300

POLYMORPHIC = {
    "anyelement", "anyarray", "anynonarray", "anyenum", "anyrange", "anymultirange",
    "anycompatible", "anycompatiblearray", "anycompatiblenonarray", "anycompatiblerange",
    "anycompatiblemultirange",
}
ARRAY_POLYMORPHIC = {"anyarray", "anycompatiblearray"}
# "any" and polymorphic positions get every type in use when a call has at most
# this many of them (types in use, squared, is about a hundred overloads).
MAX_FLEXIBLE_POSITIONS = 2

# ---------------------------------------------------------------------------
# Reading the bodies


@dataclass(frozen=True)
class Call:
    """One function call found in a body: its schema if qualified, name, argument count."""

    schema: str | None
    name: str
    arity: int


@dataclass(frozen=True)
class Body:
    """What one credits-db function's body calls, and which types it casts to."""

    signature: str
    definer: bool
    calls: frozenset[Call]
    operators: frozenset[str]
    casts: frozenset[str]


_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CALL = re.compile(rf'(?<![A-Za-z0-9_$."])({_IDENT})(?:\s*\.\s*({_IDENT}))?\s*\(')
_CAST = re.compile(rf'::\s*({_IDENT}(?:\s*\.\s*{_IDENT})?)')
_OPERATOR_RUN = re.compile(r"[+\-*/<>=~!@#%^&|`?]+")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def _unquote(identifier: str) -> str:
    """An identifier as the catalog spells it (unquoted ones fold to lower case)."""
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier.lower()


def strip_comments_and_literals(source: str) -> str:
    """``source`` with comments removed and every string literal (quoted or
    dollar-quoted, E'' escapes included) replaced by ``''``, so that nothing
    inside a message or a dynamic query reads as a call or an operator."""
    out: list[str] = []
    i, n = 0, len(source)
    while i < n:
        if source.startswith("--", i):
            end = source.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif source.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if source.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif source.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            out.append(" ")
        elif source[i] == "'":
            escapes = i > 0 and source[i - 1] in "eE" and (
                i < 2 or not (source[i - 2].isalnum() or source[i - 2] in "_$"))
            i += 1
            while i < n:
                if escapes and source[i] == "\\":
                    i += 2
                elif source[i] == "'":
                    if source.startswith("''", i):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
            out.append("''")
        elif source[i] == '"':
            end = i + 1
            while end < n:
                if source.startswith('""', end):
                    end += 2
                elif source[end] == '"':
                    break
                else:
                    end += 1
            out.append(source[i:end + 1])
            i = end + 1
        elif source[i] == "$" and (tag := _DOLLAR_TAG.match(source, i)) and not (
                i > 0 and (source[i - 1].isalnum() or source[i - 1] in "_$")):
            end = source.find(tag.group(0), tag.end())
            i = n if end < 0 else end + len(tag.group(0))
            out.append("''")
        else:
            out.append(source[i])
            i += 1
    return "".join(out)


def _arity(code: str, open_paren: int) -> int:
    """The number of arguments between the parenthesis at ``open_paren`` and its match."""
    depth, commas, i = 0, 0, open_paren
    while i < len(code):
        char = code[i]
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth == 0:
                break
        elif char == "," and depth == 1:
            commas += 1
        i += 1
    inside = code[open_paren + 1:i].strip()
    if inside in ("", "*"):
        return 0
    return commas + 1


def find_calls(code: str) -> set[Call]:
    """Every ``name(`` and ``schema.name(`` in stripped ``code``, with its arity."""
    calls = set()
    for match in _CALL.finditer(code):
        first, second = match.group(1), match.group(2)
        schema, name = (None, first) if second is None else (first, second)
        calls.add(Call(None if schema is None else _unquote(schema), _unquote(name),
                       _arity(code, match.end() - 1)))
    return calls


def _split_operator_run(run: str) -> list[str]:
    """Split a run of operator characters as PostgreSQL's lexer does: a
    multi-character operator ends in ``+`` or ``-`` only if it also contains
    one of ``~ ! @ # % ^ & | ` ?``."""
    operators = []
    while run:
        symbol = run
        if not set(symbol) & set("~!@#%^&|`?"):
            while len(symbol) > 1 and symbol[-1] in "+-":
                symbol = symbol[:-1]
        operators.append("<>" if symbol == "!=" else symbol)
        run = run[len(symbol):]
    return operators


def find_operators(code: str) -> set[str]:
    """Every operator symbol in stripped ``code``, and ``=`` / ``<>`` where a
    construct looks one up by name (IN, NULLIF, IS DISTINCT FROM, USING, CASE)."""
    cleaned = re.sub(r"::|:=|=>", " ", code)
    cleaned = re.sub(r"%\s*(ROWTYPE|TYPE)\b", " ", cleaned, flags=re.IGNORECASE)
    found: set[str] = set()
    for run in _OPERATOR_RUN.findall(cleaned):
        found.update(_split_operator_run(run))
    if re.search(r"\b(IN|NULLIF|DISTINCT\s+FROM|USING|CASE|ANY|SOME)\b", code, re.IGNORECASE):
        found.add("=")
    if re.search(r"\bNOT\s+IN\b|\bALL\s*\(", code, re.IGNORECASE):
        found.add("<>")
    return found


def find_casts(code: str) -> set[str]:
    """Every type named in a ``::type`` cast in stripped ``code``."""
    return {re.sub(r"\s+", "", match) for match in _CAST.findall(code)}


def read_bodies(conn: Conn) -> list[Body]:
    """Every credits-db function in ``public`` with what its body depends on."""
    rows = conn.execute(
        "SELECT p.oid, p.oid::regprocedure::text, p.prosecdef, p.prosrc,"
        "       p.prosqlbody IS NOT NULL"
        " FROM pg_catalog.pg_proc p"
        " WHERE p.pronamespace = 'public'::regnamespace"
        "   AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d"
        "                   WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid"
        "                     AND d.deptype = 'e')"
        " ORDER BY 2"
    ).fetchall()
    bodies = []
    for oid, signature, definer, source, atomic in rows:
        code = strip_comments_and_literals(source or "")
        calls, operators, casts = find_calls(code), find_operators(code), find_casts(code)
        if atomic:
            # BEGIN ATOMIC: resolved when created, recorded in pg_depend.
            for schema, name, arity in conn.execute(
                "SELECT n.nspname, p.proname, p.pronargs FROM pg_catalog.pg_depend d"
                " JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid"
                " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
                " WHERE d.classid = 'pg_proc'::regclass AND d.objid = %s"
                "   AND d.refclassid = 'pg_proc'::regclass", (oid,)
            ).fetchall():
                calls.add(Call(schema, name, arity))
            operators.update(row[0] for row in conn.execute(
                "SELECT o.oprname FROM pg_catalog.pg_depend d"
                " JOIN pg_catalog.pg_operator o ON o.oid = d.refobjid"
                " WHERE d.classid = 'pg_proc'::regclass AND d.objid = %s"
                "   AND d.refclassid = 'pg_operator'::regclass", (oid,)
            ).fetchall())
        bodies.append(Body(signature, definer, frozenset(calls), frozenset(operators),
                           frozenset(casts)))
    return bodies


# ---------------------------------------------------------------------------
# The catalog the overloads are generated from


@dataclass(frozen=True)
class PgType:
    """The few facts of a pg_type row the generator needs."""

    oid: int
    name: str
    typtype: str
    category: str
    array: int


@dataclass(frozen=True)
class Proc:
    """A pg_proc row a call may resolve to."""

    schema: str
    name: str
    nargs: int
    ndefaults: int
    argtypes: tuple[int, ...]
    variadic: int
    rettype: int
    retset: bool
    kind: str
    has_out: bool

    def types_for(self, arity: int) -> tuple[int, ...] | None:
        """The argument types a call with ``arity`` arguments binds to, or None."""
        if self.has_out:
            return None
        if self.variadic and arity >= self.nargs - 1:
            return self.argtypes[:self.nargs - 1] + (self.variadic,) * (arity - self.nargs + 1)
        if self.nargs - self.ndefaults <= arity <= self.nargs:
            return self.argtypes[:arity]
        return None


@dataclass(frozen=True)
class Oper:
    """A pg_operator row an operator symbol may resolve to."""

    schema: str
    name: str
    left: int
    right: int
    result: int


class Catalog:
    """pg_type, the implicit casts, and the functions and operators the bodies name."""

    def __init__(self, conn: Conn, names: Iterable[str], operators: Iterable[str]) -> None:
        self.types = {
            oid: PgType(oid, name, typtype, category, array)
            for oid, name, typtype, category, array in conn.execute(
                "SELECT oid, pg_catalog.format_type(oid, NULL), typtype, typcategory, typarray"
                " FROM pg_catalog.pg_type").fetchall()
        }
        self.by_name = {t.name: t.oid for t in self.types.values()}
        self.text = self.by_name["text"]
        self.implicit_sources: dict[int, set[int]] = {}
        for source, target in conn.execute(
                "SELECT castsource, casttarget FROM pg_catalog.pg_cast"
                " WHERE castcontext = 'i'").fetchall():
            if self.plantable(source) and source != target:
                self.implicit_sources.setdefault(target, set()).add(source)
        self.procs = [
            Proc(schema, name, nargs, ndefaults, tuple(argtypes), *rest)
            for schema, name, nargs, ndefaults, argtypes, *rest in conn.execute(
                "SELECT n.nspname, p.proname, p.pronargs, p.pronargdefaults,"
                "       p.proargtypes::oid[], p.provariadic, p.prorettype, p.proretset,"
                "       p.prokind::text, coalesce(p.proargmodes && '{o,b,t}'::\"char\"[], false)"
                " FROM pg_catalog.pg_proc p"
                " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname IN ('pg_catalog', 'public') AND p.proname = ANY(%s)",
                (sorted(set(names)),)).fetchall()
        ]
        self.opers = [
            Oper(*row) for row in conn.execute(
                "SELECT n.nspname, o.oprname, o.oprleft, o.oprright, o.oprresult"
                " FROM pg_catalog.pg_operator o"
                " JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace"
                " WHERE n.nspname IN ('pg_catalog', 'public') AND o.oprname = ANY(%s)",
                (sorted(set(operators)),)).fetchall()
        ]

    def name(self, oid: int) -> str:
        """The type's name as DDL spells it."""
        return self.types[oid].name

    def is_flexible(self, oid: int) -> bool:
        """``"any"`` or polymorphic: a call binds any type there."""
        return self.name(oid) in POLYMORPHIC or self.name(oid) == '"any"'

    def plantable(self, oid: int) -> bool:
        """A type a PL/pgSQL function may take: not a pseudo-type, nor internal-use."""
        pg_type = self.types.get(oid)
        return pg_type is not None and pg_type.typtype != "p" and pg_type.category != "Z"

    def replacements(self, oid: int, in_use: set[int]) -> set[int]:
        """Types a caller's argument may have where the candidate takes ``oid``."""
        if self.is_flexible(oid):
            return set(in_use)
        return {self.text} | self.implicit_sources.get(oid, set())


def types_in_use(conn: Conn, catalog: Catalog, bodies: list[Body]) -> set[int]:
    """Types a call in the bodies can see: credits-db's columns, its functions'
    arguments and results, the casts in the bodies, and what the called
    functions return."""
    in_use = {row[0] for row in conn.execute(
        "SELECT a.atttypid FROM pg_catalog.pg_attribute a"
        " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v')"
        "   AND a.attnum > 0 AND NOT a.attisdropped"
        " UNION SELECT unnest(p.proargtypes::oid[] || p.prorettype)"
        " FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'public'::regnamespace"
    ).fetchall()}
    for cast in set().union(*(body.casts for body in bodies)):
        row = conn.execute("SELECT pg_catalog.to_regtype(%s)::oid", (cast,)).fetchone()
        if row is not None and row[0] is not None:
            in_use.add(row[0])
    results: dict[str, set[int]] = {}
    for proc in catalog.procs:
        results.setdefault(proc.name, set()).add(proc.rettype)
    # A function's result type counts when every overload of its name agrees on it.
    in_use.update(next(iter(types)) for types in results.values() if len(types) == 1)
    return {oid for oid in in_use if catalog.plantable(oid)}


# ---------------------------------------------------------------------------
# Planting


SCHEMA = "@schema@"


@dataclass(frozen=True)
class Plant:
    """One hostile object: its label (what it records when it runs) and DDL,
    both with ``SCHEMA`` where the schema it is planted in goes."""

    label: str
    statements: tuple[str, ...]

    def into(self, schema: str) -> Plant:
        """This object planted in ``schema``."""
        return Plant(self.label.replace(SCHEMA, schema),
                     tuple(s.replace(SCHEMA, schema) for s in self.statements))


def _literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _planted_body(label: str, returns: str, answer: str | None, *, is_void: bool,
                  retset: bool) -> str:
    """A PL/pgSQL body that records it ran, then answers."""
    record = (
        f"RAISE NOTICE '{MARKER}: % (as %)', {_literal(label)}, current_user;\n"
        f"INSERT INTO public.{MARKER_TABLE} (label, ran_as)"
        f" VALUES ({_literal(label)}, current_user);\n"
    )
    if retset:
        answer_block = "RETURN;"
    elif returns == "boolean":
        answer_block = "RETURN true;"
    elif is_void:
        answer_block = (f"BEGIN PERFORM {answer}; EXCEPTION WHEN OTHERS THEN NULL; END;\nRETURN;"
                        if answer else "RETURN;")
    elif answer is None:
        answer_block = "RETURN NULL;"
    else:
        answer_block = f"BEGIN RETURN {answer}; EXCEPTION WHEN OTHERS THEN RETURN NULL; END;"
    return f"BEGIN\n{record}{answer_block}\nEND"


def _create_function(schema: str, name: str, args: list[str], returns: str, retset: bool,
                     body: str) -> str:
    """CREATE FUNCTION for a planted overload (its own search_path: planted
    objects never call each other)."""
    signature = ", ".join(f"a{i} {arg}" for i, arg in enumerate(args, 1))
    return (
        f"CREATE FUNCTION {schema}.{name}({signature})"
        f" RETURNS {'SETOF ' if retset else ''}{returns} LANGUAGE plpgsql"
        f" SET search_path = pg_catalog, pg_temp AS {_literal(body)}"
    )


def _quote_ident(name: str) -> str:
    """``name`` as a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Planner:
    """Generates the overloads for the calls and operators found in the bodies."""

    catalog: Catalog
    in_use: set[int]
    plants: list[Plant] = field(default_factory=list)
    taken: set[tuple[str, tuple[int, ...]]] = field(default_factory=set)
    public_taken: set[tuple[str, tuple[int, ...]]] = field(default_factory=set)
    unplanted: list[Call] = field(default_factory=list)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        # Existing signatures: an identical one in pg_catalog always wins (it is
        # searched first), one in public cannot be created twice.
        for proc in self.catalog.procs:
            self.taken.add((proc.name, proc.argtypes))
            if proc.schema == "public":
                self.public_taken.add((proc.name, proc.argtypes))
        for oper in self.catalog.opers:
            self.taken.add(("operator " + oper.name, (oper.left, oper.right)))

    def _returns(self, rettype: int, variant: tuple[int, ...]) -> str | None:
        """The planted function's result type, or None if it cannot have one."""
        name = self.catalog.name(rettype)
        compatible = any(self.catalog.name(t) == "anycompatible" for t in variant)
        if name in POLYMORPHIC:
            if name not in ("anyelement", "anynonarray", "anycompatible",
                            "anycompatiblenonarray", *ARRAY_POLYMORPHIC):
                return None
            if name in ARRAY_POLYMORPHIC:
                return "anycompatiblearray" if compatible else "text[]"
            return "anycompatible" if compatible else "text"
        if name == "void" or self.catalog.plantable(rettype):
            return name
        return None

    def _variants(self, types: tuple[int, ...]) -> set[tuple[int, ...]]:
        """Looser signatures for a candidate taking ``types``."""
        catalog, text = self.catalog, self.catalog.text
        base = tuple(text if catalog.is_flexible(t) else t for t in types)
        variants = {tuple(text for _ in types)}
        for i, t in enumerate(types):
            for replacement in catalog.replacements(t, self.in_use):
                variants.add((*base[:i], replacement, *base[i + 1:]))
        flexible = [i for i, t in enumerate(types) if catalog.is_flexible(t)]
        if 0 < len(flexible) <= MAX_FLEXIBLE_POSITIONS:
            for combo in itertools.product(sorted(self.in_use), repeat=len(flexible)):
                variant = list(base)
                for position, replacement in zip(flexible, combo, strict=True):
                    variant[position] = replacement
                variants.add(tuple(variant))
        if types:
            variants.add(tuple(catalog.by_name["anycompatible"] for _ in types))
        return variants

    def _argument(self, position: int, original: int) -> str:
        """The planted function's argument as the real function takes it."""
        if self.catalog.is_flexible(original):
            return f"${position}"
        return f"${position}::{self.catalog.name(original)}"

    def add_call(self, call: Call) -> None:
        """Overloads for every candidate of one call (a call that has a usable
        candidate but gets none is kept in ``unplanted``)."""
        before, usable = len(self.plants), False
        for proc in self.catalog.procs:
            if proc.name != call.name or proc.kind not in ("f", "a", "w"):
                continue
            types = proc.types_for(call.arity)
            if types is None or not all(
                    self.catalog.plantable(t) or self.catalog.is_flexible(t) for t in types):
                continue
            usable = usable or self._returns(proc.rettype, types) is not None
            variants: set[tuple[int, ...]] = {()} if not types else self._variants(types)
            for variant in sorted(variants):
                key = (proc.name, variant)
                # An identical pg_catalog signature is searched first and always
                # wins; planted anyway for a call without arguments, which has no
                # looser signature.
                if key in self.taken and (variant or proc.schema != "pg_catalog"
                                          or key in self.public_taken):
                    continue
                returns = self._returns(proc.rettype, variant)
                if returns is None:
                    continue
                self.taken.add(key)
                self.public_taken.add(key)
                target = f"{_quote_ident(proc.schema)}.{_quote_ident(proc.name)}"
                arguments = ", ".join(
                    self._argument(i, t) for i, t in enumerate(types, 1)) or (
                    "*" if proc.kind == "a" else "")
                answer: str | None = f"{target}({arguments})"
                if proc.kind == "a":
                    answer = f"(SELECT {answer})"
                elif proc.kind == "w":
                    answer = None
                names = [self.catalog.name(t) for t in variant]
                label = f"{SCHEMA}.{proc.name}({', '.join(names)})"
                body = _planted_body(label, returns, answer, is_void=returns == "void",
                                     retset=proc.retset)
                self.plants.append(Plant(label, (_create_function(
                    SCHEMA, _quote_ident(proc.name), names, returns, proc.retset, body),)))
        if usable and len(self.plants) == before:
            self.unplanted.append(call)

    def add_operator(self, name: str) -> None:
        """Overloads of one operator symbol, per operand, for the types in use."""
        catalog, text = self.catalog, self.catalog.text
        for oper in catalog.opers:
            if oper.name != name or oper.right not in self.in_use or (
                    oper.left != 0 and oper.left not in self.in_use):
                continue
            variants: set[tuple[int, int]] = set()
            for right in catalog.replacements(oper.right, self.in_use):
                variants.add((oper.left, right))
            if oper.left != 0:
                variants.add((text, text))
                for left in catalog.replacements(oper.left, self.in_use):
                    variants.add((left, oper.right))
            for left, right in sorted(variants):
                key = ("operator " + name, (left, right))
                returns = self._returns(oper.result, ())
                if key in self.taken or returns is None or returns == "void":
                    continue
                self.taken.add(key)
                function = f"hostile_operator_{next(self.counter)}"
                if left == 0:
                    label = f"{SCHEMA}.{name}(NONE, {catalog.name(right)})"
                    args = [catalog.name(right)]
                    answer = (f"OPERATOR({oper.schema}.{name})"
                              f" $1::{catalog.name(oper.right)}")
                    operands = f"RIGHTARG = {catalog.name(right)}"
                else:
                    label = f"{SCHEMA}.{name}({catalog.name(left)}, {catalog.name(right)})"
                    args = [catalog.name(left), catalog.name(right)]
                    answer = (f"$1::{catalog.name(oper.left)} OPERATOR({oper.schema}.{name})"
                              f" $2::{catalog.name(oper.right)}")
                    operands = (f"LEFTARG = {catalog.name(left)},"
                                f" RIGHTARG = {catalog.name(right)}")
                body = _planted_body(label, returns, answer, is_void=False, retset=False)
                self.plants.append(Plant(label, (
                    _create_function(SCHEMA, function, args, returns, False, body),
                    f"CREATE OPERATOR {SCHEMA}.{name} ({operands},"
                    f" FUNCTION = {SCHEMA}.{function})",
                )))


def plan_overloads(conn: Conn) -> tuple[list[Body], Planner]:
    """Read the bodies and generate every overload to plant."""
    bodies = read_bodies(conn)
    calls = set().union(*(body.calls for body in bodies))
    operators = set().union(*(body.operators for body in bodies))
    catalog = Catalog(conn, {call.name for call in calls}, operators)
    planner = Planner(catalog, types_in_use(conn, catalog, bodies))
    for call in sorted(calls, key=lambda c: (c.name, c.arity, c.schema or "")):
        planner.add_call(call)
    for operator in sorted(operators):
        planner.add_operator(operator)
    return bodies, planner


def create_marker_table(attacker: Conn) -> None:
    """The attacker's table every planted object records its run in."""
    attacker.execute(
        f"CREATE TABLE public.{MARKER_TABLE} (label text NOT NULL, ran_as text NOT NULL,"
        " at timestamptz NOT NULL DEFAULT now())")
    attacker.execute(f"GRANT INSERT ON public.{MARKER_TABLE} TO PUBLIC")


def plant(conn: Conn, plants: list[Plant], schema: str) -> tuple[list[Plant], list[Plant]]:
    """Create every object in ``schema`` (as the connection's role); return
    those created and those CREATE refused."""
    planted, refused = [], []
    for candidate in plants:
        placed = candidate.into(schema)
        try:
            with conn.transaction():
                for statement in placed.statements:
                    conn.execute(statement.encode())
        except psycopg.Error as error:
            refused.append(Plant(f"{placed.label}: {error.sqlstate} {error}", ()))
        else:
            planted.append(placed)
    return planted, refused


# ---------------------------------------------------------------------------
# Callers


@dataclass
class Roles:
    """The login roles of one test: an attacker, an application, an admin."""

    attacker: str
    app: str
    admin: str


@pytest.fixture
def roles(db: Database) -> Iterator[Roles]:
    """Three LOGIN roles, dropped (with what they own in ``db``) afterwards.

    The attacker may CREATE in ``public`` of this database only; the app is a
    member of credits_user, the admin of credits_admin."""
    suffix = uuid.uuid4().hex[:10]
    made = Roles(f"hostile_attacker_{suffix}", f"hostile_app_{suffix}",
                 f"hostile_admin_{suffix}")
    with db.connect() as conn:
        for name in (made.attacker, made.app, made.admin):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(
            sql.Identifier(made.attacker)))
        conn.execute(sql.SQL("GRANT credits_user TO {}").format(sql.Identifier(made.app)))
        conn.execute(sql.SQL("GRANT credits_admin TO {}").format(sql.Identifier(made.admin)))
    try:
        yield made
    finally:
        with db.connect() as conn:
            for name in (made.attacker, made.app, made.admin):
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@dataclass
class Session:
    """Runs the entry points and collects what went wrong, so that one run
    reports every problem (and every planted object that ran), not the first."""

    db: Database
    stack: ExitStack
    problems: list[str] = field(default_factory=list)
    notices: list[tuple[str, str, str]] = field(default_factory=list)

    def connect(self, user: str | None, **kwargs: Any) -> Conn:
        """A new autocommit connection as ``user`` (the owner if None), its
        NOTICEs and WARNINGs collected."""
        if user is not None:
            kwargs["user"] = user
        conn = self.stack.enter_context(self.db.connect(**kwargs))
        conn.add_notice_handler(lambda d: self.notices.append(
            (user or "owner", d.severity_nonlocalized or "", d.message_primary or "")))
        return conn

    def call(self, label: str, conn: Conn, query: str, params: Any = None, *,
             user_id: str | None = None, expect: str | None = None) -> Any:
        """Run ``query`` in one transaction (as ``user_id`` when given, the way an
        application sets credits.user_id per transaction); expect SQLSTATE
        ``expect`` or success; return the first column of the first row."""
        try:
            with conn.transaction():
                if user_id is not None:
                    conn.execute("SELECT pg_catalog.set_config('credits.user_id', %s, true)",
                                 (user_id,))
                cursor = conn.execute(query.encode(), params)
                row = cursor.fetchone() if cursor.description else None
        except psycopg.Error as error:
            if error.sqlstate != expect:
                self.problems.append(
                    f"{label}: failed with {error.sqlstate} (expected "
                    f"{expect or 'success'}): {str(error).splitlines()[0]}")
            return None
        if expect is not None:
            self.problems.append(f"{label}: succeeded (expected {expect}): {row}")
            return None
        return None if row is None else row[0]

    def check(self, label: str, got: Any, expected: Any) -> None:
        """Record a problem when ``got`` is not ``expected``."""
        if got != expected:
            self.problems.append(f"{label}: got {got!r}, expected {expected!r}")


def _field(result: Any, key: str) -> Any:
    """One key of a jsonb result (None when the call failed)."""
    return result.get(key) if isinstance(result, dict) else None


def run_entry_points(session: Session, app: Conn, admin: Conn, people: dict[str, str]) -> None:
    """Every credits-db entry point, as the callers that use it: ``app`` a
    credits_user login, ``admin`` a credits_admin login, and the owner."""
    me, victim, boss, mate = people["me"], people["victim"], people["boss"], people["mate"]
    call, check = session.call, session.check

    # A credits_user login: others' accounts are refused, its own works.
    call("credits_user debits someone else", app,
         "SELECT public.debit_credits(%s::uuid, 10)", (victim,), user_id=me, expect="42501")
    call("credits_user debits someone else with a key", app,
         "SELECT public.debit_credits(%s::uuid, 10, 'usage', NULL, 'steal-1')", (victim,),
         user_id=me, expect="42501")
    call("credits_user reads someone else's balance", app,
         "SELECT public.get_credit_balance(%s::uuid)", (victim,), user_id=me, expect="42501")
    spent = call("credits_user debits itself", app,
                 "SELECT public.debit_credits(%s::uuid, 25)", (me,), user_id=me)
    check("own debit: remaining", _field(spent, "remaining_credits"), 325)
    keyed = call("credits_user debits itself with a key", app,
                 "SELECT public.debit_credits(%s::uuid, 5, 'usage', NULL, 'k-1')", (me,),
                 user_id=me)
    check("keyed debit: remaining", _field(keyed, "remaining_credits"), 320)
    replay = call("credits_user replays the keyed debit", app,
                  "SELECT public.debit_credits(%s::uuid, 5, 'usage', NULL, 'k-1')", (me,),
                  user_id=me)
    check("replay: replayed", _field(replay, "replayed"), True)
    check("replay: remaining", _field(replay, "remaining_credits"), 320)
    call("credits_user overspends", app, "SELECT public.debit_credits(%s::uuid, 100000)",
         (me,), user_id=me, expect="CR001")
    own = call("credits_user reads its balance", app,
               "SELECT public.get_credit_balance(%s::uuid)", (me,), user_id=me)
    check("own balance: spendable", _field(own, "spendable"), 320)

    # A credits_admin login.
    dry = call("backfill dry run", admin, "SELECT public.backfill_user_credits(true)")
    check("dry run: users_backfilled", _field(dry, "users_backfilled"), 3)
    first = call("backfill one", admin, "SELECT public.backfill_user_credits(false, 1)")
    check("backfill one: users_backfilled", _field(first, "users_backfilled"), 1)
    batch = call("batched backfill", admin,
                 "SELECT public.backfill_user_credits_batch(NULL::uuid, 1000)")
    check("batch: users_backfilled", _field(batch, "users_backfilled"), 2)
    rest = call("backfill the rest", admin, "SELECT public.backfill_user_credits()")
    check("backfill the rest: users_backfilled", _field(rest, "users_backfilled"), 0)
    granted = call("grant", admin, "SELECT public.grant_credits(%s::uuid, 100)", (me,))
    check("grant: remaining", _field(granted, "remaining_credits"), 420)
    for attempt in ("grant with a key", "grant replayed"):
        keyed = call(attempt, admin,
                     "SELECT public.grant_credits(%s::uuid, 7, 'admin_grant', NULL, 'g-1')",
                     (me,))
        check(f"{attempt}: remaining", _field(keyed, "remaining_credits"), 427)
    refunded = call("refund", admin, "SELECT public.refund_credits(%s::bigint)",
                    (_field(spent, "log_id") or 0,))
    check("refund: remaining", _field(refunded, "remaining_credits"), 452)
    call("add team member", admin, "SELECT public.add_team_member(%s::uuid, %s::uuid)",
         (boss, mate))
    pooled = call("team member spends from the pool", app,
                  "SELECT public.debit_credits(%s::uuid, 400)", (mate,), user_id=mate)
    check("pool debit: from_team_pool", _field(pooled, "from_team_pool"), True)
    check("pool debit: remaining", _field(pooled, "remaining_credits"), 4600)
    mates = call("member's balance", app, "SELECT public.get_credit_balance(%s::uuid)",
                 (mate,), user_id=mate)
    check("member's balance: spendable", _field(mates, "spendable"), 4600)
    removed = call("remove team member", admin,
                   "SELECT public.remove_team_member(%s::uuid, %s::uuid)", (boss, mate))
    check("remove team member", removed, True)
    theirs = call("credits_admin reads someone's balance", admin,
                  "SELECT public.get_credit_balance(%s::uuid)", (victim,))
    check("admin reads: spendable", _field(theirs, "spendable"), 350)
    debited = call("credits_admin debits someone", admin,
                   "SELECT public.debit_credits(%s::uuid, 50)", (victim,))
    check("admin debit: remaining", _field(debited, "remaining_credits"), 300)
    problems = call("integrity", admin,
                    "SELECT pg_catalog.count(*) FROM public.verify_credit_integrity()")
    check("integrity problems", problems, 0)
    report = call("allocation report", admin, "SELECT public.credit_allocation_report()")
    check("report: users_without_credits", _field(report, "users_without_credits"), 0)

    # The owner, as the host application: signups, role changes, a delete.
    owner = session.connect(None)
    signed_up = call("signup", owner,
                     "INSERT INTO public.users (role) VALUES ('member') RETURNING id::text")
    people["signup"] = signed_up or ""
    call("bulk signup", owner,
         "INSERT INTO public.users (role) VALUES ('admin'), (NULL), ('no such role')")
    call("promotion", owner, "UPDATE public.users SET role = 'team_admin' WHERE id = %s::uuid",
         (people["promoted"],))
    call("demotion", owner, "UPDATE public.users SET role = 'member' WHERE id = %s::uuid",
         (people["promoted"],))
    call("delete", owner, "DELETE FROM public.users WHERE id = %s::uuid", (people["leaver"],))


def final_state(session: Session, people: dict[str, str]) -> None:
    """Check balances and the ledger from a connection that sees no planted object."""
    clean = session.connect(None, options="-c search_path=pg_catalog")
    expected = {
        "me": (482, 30, 452),
        "victim": (350, 50, 300),
        "boss": (5000, 400, 4600),
        "mate": (350, 0, 350),
        "promoted": (5000, 0, 5000),
        "signup": (350, 0, 350),
    }
    for person, balance in expected.items():
        row = clean.execute(
            "SELECT total_credits, used_credits, remaining_credits FROM public.user_credits"
            " WHERE user_id::text = %s", (people[person],)).fetchone()
        session.check(f"final balance of {person}", row, balance)
    session.check("leaver's balance row", clean.execute(
        "SELECT count(*) FROM public.user_credits WHERE user_id::text = %s",
        (people["leaver"],)).fetchone(), (0,))
    session.check("balances by role", clean.execute(
        "SELECT u.role, uc.total_credits FROM public.users u"
        " LEFT JOIN public.user_credits uc ON uc.user_id = u.id"
        " WHERE u.id::text <> ALL(%s) ORDER BY u.role NULLS FIRST, uc.total_credits",
        (list(people.values()),)).fetchall(),
        [(None, 350), ("admin", 1000), ("member", 350), ("member", 350), ("member", 350),
         ("no such role", 350)])
    session.check("ledger mismatches", clean.execute(
        "SELECT uc.user_id FROM public.user_credits uc"
        " LEFT JOIN public.credit_usage_log l ON l.user_id = uc.user_id"
        " GROUP BY uc.user_id, uc.remaining_credits, uc.total_credits"
        " HAVING uc.remaining_credits <> coalesce(sum(l.amount), 0)"
        "     OR uc.total_credits <> coalesce(sum(l.amount) FILTER (WHERE l.amount > 0), 0)"
    ).fetchall(), [])
    session.problems.extend(
        f"planted object ran: {label} (as {ran_as})" for label, ran_as in clean.execute(
            f"SELECT DISTINCT label, ran_as FROM public.{MARKER_TABLE} ORDER BY 1, 2"
        ).fetchall())


def test_hostile_overloads_capture_no_call(db: Database, roles: Roles) -> None:
    """Plant looser overloads of everything the functions call, in public (as a
    role that may CREATE there) and in the callers' own pg_temp; run every
    entry point; nothing planted runs and every answer is right."""
    with db.connect() as conn:
        people = dict(zip(("me", "victim", "boss", "mate", "promoted", "leaver"),
                          add_users(conn, "member", "member", "team_admin", "member",
                                    "member", "member"), strict=True))
        add_users_without_credits(conn, "member", "member", "member")
        bodies, planner = plan_overloads(conn)

    assert [body for body in bodies if body.definer], "no SECURITY DEFINER function in public"
    calls = set().union(*(body.calls for body in bodies))
    operators = set().union(*(body.operators for body in bodies))
    known = {proc.name for proc in planner.catalog.procs}
    public_names = {proc.name for proc in planner.catalog.procs if proc.schema == "public"}
    assert len({call.name for call in calls if call.name in known}) >= 10, calls
    assert {"=", "<>", "||"} <= operators, operators
    # Every call with a candidate got overloads (a call without arguments of a
    # function in public cannot: that very signature is taken).
    assert [call for call in planner.unplanted
            if call.arity > 0 or call.name not in public_names] == []

    with ExitStack() as stack:
        session = Session(db, stack)
        attacker = session.connect(roles.attacker)
        create_marker_table(attacker)
        planted, refused = plant(attacker, planner.plants, "public")
        assert len(planted) >= MIN_PLANTED, (len(planted), refused[:20])
        app, admin = session.connect(roles.app), session.connect(roles.admin)
        for caller in (app, admin):
            # Temporary schemas are never searched for functions or operators.
            in_temp, refused_in_temp = plant(caller, planner.plants, "pg_temp")
            # Gone before the connection closes, not while the roles are dropped.
            stack.callback(caller.execute, "DISCARD TEMP")
            assert len(in_temp) >= MIN_PLANTED, (len(in_temp), refused_in_temp[:20])
        logging.getLogger(__name__).info(
            "planted %d hostile objects in public (%d refused by CREATE), %d in pg_temp",
            len(planted), len(refused), len(in_temp))

        run_entry_points(session, app, admin, people)
        final_state(session, people)

        ran = sorted({message for _user, _severity, message in session.notices
                      if message.startswith(MARKER)})
        warnings = sorted({f"{user}: {message}" for user, severity, message in session.notices
                           if severity == "WARNING"})
        ambiguous = [problem for problem in session.problems if "42725" in problem]
        assert not (ran or warnings or session.problems), "\n".join(
            [f"{len(planted)} planted in public, {len(in_temp)} in pg_temp;"
             " planted objects that ran:", *ran,
             "warnings:", *warnings,
             f"problems ({len(ambiguous)} ambiguity errors):", *session.problems])


def test_an_auth_uid_created_by_a_non_owner_is_not_trusted(db: Database, roles: Roles) -> None:
    """credits_current_user_id() reads auth.uid() when there is one (Supabase). A
    role that may create schemas plants an auth.uid() answering the victim's id:
    a credits_user still may not spend or read the victim's credits, and the
    planted function never runs."""
    with db.connect() as conn:
        me, victim = add_users(conn, "member", "member")
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(db.name), sql.Identifier(roles.attacker)))
    with ExitStack() as stack:
        session = Session(db, stack)
        attacker = session.connect(roles.attacker)
        create_marker_table(attacker)
        attacker.execute("CREATE SCHEMA auth")
        attacker.execute("GRANT USAGE ON SCHEMA auth TO PUBLIC")
        body = _planted_body("auth.uid()", "uuid", _literal(victim) + "::uuid",
                             is_void=False, retset=False)
        attacker.execute(_create_function("auth", "uid", [], "uuid", False, body).encode())
        app = session.connect(roles.app)
        session.call("credits_user debits someone else as auth.uid()", app,
                     "SELECT public.debit_credits(%s::uuid, 10)", (victim,), user_id=me,
                     expect="42501")
        session.call("credits_user reads someone else's balance as auth.uid()", app,
                     "SELECT public.get_credit_balance(%s::uuid)", (victim,), user_id=me,
                     expect="42501")
        clean = session.connect(None, options="-c search_path=pg_catalog")
        session.check("victim's balance", clean.execute(
            "SELECT total_credits, used_credits FROM public.user_credits"
            " WHERE user_id = %s::uuid", (victim,)).fetchone(), (350, 0))
        ran = [message for _user, _severity, message in session.notices
               if message.startswith(MARKER)]
        assert not (ran or session.problems), "\n".join([*ran, *session.problems])


# ---------------------------------------------------------------------------
# The install's warning


WARNING_WORDS = "PUBLIC may CREATE in schema public"


def _create_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """WARNING records of the migration that are about CREATE on public."""
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING and "CREATE" in record.getMessage()
            and "public" in record.getMessage()]


def test_install_warns_when_public_may_create_in_public(
        empty_db: Database, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL 14 and older (and pg_upgrade) let PUBLIC create in public: say so."""
    with empty_db.connect() as conn:
        conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    with caplog.at_level(logging.WARNING, logger="alembic.runtime.migration"):
        migrate.upgrade(empty_db.url)
    warnings = _create_warnings(caplog)
    assert warnings, caplog.text
    assert any(WARNING_WORDS in message for message in warnings), warnings


def test_install_does_not_warn_when_public_may_not_create(
        empty_db: Database, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL 15's default (only the database owner creates in public): no warning."""
    with empty_db.connect() as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    with caplog.at_level(logging.WARNING, logger="alembic.runtime.migration"):
        migrate.upgrade(empty_db.url)
    assert _create_warnings(caplog) == []

