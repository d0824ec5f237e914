"""Write a new Alembic revision from the changed files in ``sql/`` (see docs/migrations.md).

    python -m scripts.new_revision new 0008 debit_fewer_locks 015_debit_credits.sql
    python -m scripts.new_revision refreeze 0008

``new`` writes ``alembic/versions/NNNN_slug.py`` (the standard revision module),
``NNNN_slug.sql`` (every function of the changed files that differs from what
the landed revisions left, as CREATE OR REPLACE, with its REVOKE and COMMENT
statements; ``DROP FUNCTION`` for a function no file of ``sql/`` defines any
more; marked sections for the DDL, which it cannot derive) and
``NNNN_slug_down.sql`` (each replaced or dropped function as the landed
revisions left it: the last CREATE [OR REPLACE] of that signature in their
upgrade files, the ALTER FUNCTION statements after it, its last COMMENT;
``DROP FUNCTION`` for each new one), and enters the three files in
``FROZEN``. Lines starting ``-- EDIT`` and ``-- REVIEW`` are for the author.

``refreeze`` re-enters a revision's files in ``FROZEN`` after its author edited
them, before it lands. A landed revision is never refrozen: it never changes.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import re
import sys
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path

from scripts import manifest
from scripts.sqltext import (
    FunctionStatement,
    Signature,
    SignatureAt,
    Statement,
    altered_search_path,
    or_replace,
    parameter_names,
    privilege_key,
    read_function_statement,
    renamed,
    result_type,
    split_statements,
    with_search_path,
)

ROOT = Path(__file__).resolve().parent.parent
_REVISION_ID = re.compile(r"[0-9]{4}")
_SLUG = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")


class RevisionError(Exception):
    """The revision cannot be written as asked (the message says why)."""


# ---- the landed revisions ---------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    """One landed revision: its id, its predecessor and its module."""

    revision: str
    down_revision: str | None
    module: Path

    @property
    def upgrade_sql(self) -> Path:
        """The frozen upgrade SQL beside the module."""
        return self.module.with_suffix(".sql")


def _assignments(module: Path) -> dict[str, object]:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    values: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def read_revisions(versions: Path) -> list[Revision]:
    """The revisions in ``versions``, oldest first; RevisionError unless they form one line."""
    found = []
    for module in sorted(versions.glob("*.py")):
        values = _assignments(module)
        revision, down = values.get("revision"), values.get("down_revision")
        if not isinstance(revision, str) or not (down is None or isinstance(down, str)):
            raise RevisionError(f"{module.name}: no revision / down_revision strings")
        found.append(Revision(revision, down, module))
    by_down = {r.down_revision: r for r in found}
    if len(by_down) != len(found):
        raise RevisionError("two revisions have the same down_revision: the history branches")
    chain, current = [], by_down.get(None)
    while current is not None:
        chain.append(current)
        current = by_down.get(current.revision)
    if len(chain) != len(found):
        raise RevisionError("some revisions are not on the line from the first one")
    return chain


# ---- what the landed revisions left -----------------------------------------------------


@dataclass
class Definition:
    """A function as the landed revisions left it."""

    signature: Signature
    create: FunctionStatement
    revision: str
    order: int
    alters: list[tuple[str, FunctionStatement]] = field(default_factory=list)
    comment: FunctionStatement | None = None
    privileges: list[str] = field(default_factory=list)
    privilege_keys: set[tuple[object, ...]] = field(default_factory=set)
    # The revision that last moved or renamed it: its create, comment and
    # privilege keys are rewritten to the new name, its privilege statements are not.
    renamed_in: str | None = None


def _statement_for(statement: FunctionStatement, signature: SignatureAt) -> str:
    """A GRANT or REVOKE naming several functions, rewritten to name only ``signature``."""
    text = statement.statement.text
    first, last = statement.signatures[0], statement.signatures[-1]
    return text[:first.start] + text[signature.start:signature.end] + text[last.end:]


def _renamed(definition: Definition, alter: FunctionStatement, revision: str) -> Signature:
    tokens = alter.statement.tokens[alter.signatures[0].next_index:]
    old = definition.signature
    target = tokens[-2].text.lower() if len(tokens) >= 3 else old.name
    if tokens[0].is_word("rename"):
        return Signature(old.schema, target, old.arg_types)
    return Signature(target, old.name, old.arg_types)


@dataclass
class History:
    """Replays the function statements of the landed upgrade files, in order."""

    live: dict[Signature, Definition] = field(default_factory=dict)
    count: int = 0

    def apply(self, statement: FunctionStatement, revision: str) -> None:
        """Take one statement into account."""
        self.count += 1
        handlers = {"create": self._on_create, "alter": self._on_alter,
                    "comment": self._on_comment, "privilege": self._on_privilege,
                    "drop": self._on_drop}
        handlers[statement.kind](statement, revision)

    def _on_create(self, statement: FunctionStatement, revision: str) -> None:
        signature = statement.signatures[0].signature
        earlier = self.live.get(signature)
        if earlier is None:
            self.live[signature] = Definition(signature, statement, revision, self.count)
        else:
            earlier.create, earlier.revision, earlier.order = statement, revision, self.count
            earlier.alters, earlier.renamed_in = [], None

    def _on_alter(self, statement: FunctionStatement, revision: str) -> None:
        definition = self.live.get(statement.signatures[0].signature)
        if definition is None:
            return
        if statement.moves:
            del self.live[definition.signature]
            moved = _renamed(definition, statement, revision)
            comment = definition.comment
            self.live[moved] = replace(
                definition, signature=moved, create=renamed(definition.create, moved),
                comment=None if comment is None else renamed(comment, moved),
                privilege_keys={(before, moved, after)
                                for before, _, after in definition.privilege_keys},
                renamed_in=revision)
        else:
            definition.alters.append((revision, statement))

    def _on_comment(self, statement: FunctionStatement, revision: str) -> None:
        definition = self.live.get(statement.signatures[0].signature)
        if definition is not None:
            definition.comment = None if statement.is_null else statement

    def _on_privilege(self, statement: FunctionStatement, revision: str) -> None:
        for signature in statement.signatures:
            definition = self.live.get(signature.signature)
            if definition is not None:
                definition.privileges.append(_statement_for(statement, signature))
                definition.privilege_keys.add(privilege_key(statement, signature))

    def _on_drop(self, statement: FunctionStatement, revision: str) -> None:
        for signature in statement.signatures:
            self.live.pop(signature.signature, None)


def function_statements(path: Path) -> list[FunctionStatement]:
    """The function statements of one SQL file, in order."""
    read = (read_function_statement(s) for s in split_statements(path.read_text(encoding="utf-8")))
    return [s for s in read if s is not None]


def landed_functions(revisions: list[Revision]) -> dict[Signature, Definition]:
    """Every function the landed revisions' upgrade files leave, as they leave it."""
    history = History()
    for revision in revisions:
        for statement in function_statements(revision.upgrade_sql):
            history.apply(statement, revision.revision)
    return history.live


# ---- what sql/ says now -----------------------------------------------------------------


@dataclass(frozen=True)
class SqlFunction:
    """A function of a file in ``sql/``, with the REVOKE and COMMENT statements that follow it."""

    file: str
    create: FunctionStatement
    attached: tuple[FunctionStatement, ...]

    @property
    def signature(self) -> Signature:
        """Its identity."""
        return self.create.signatures[0].signature

    @property
    def comment(self) -> FunctionStatement | None:
        """Its COMMENT statement in the file, if any."""
        return next((s for s in self.attached if s.kind == "comment"), None)


@dataclass(frozen=True)
class SqlFile:
    """One file of ``sql/``: its functions and the statements the script does not write."""

    name: str
    functions: tuple[SqlFunction, ...]
    others: tuple[Statement, ...]


def read_sql_file(path: Path) -> SqlFile:
    """Read one file of ``sql/``."""
    statements = split_statements(path.read_text(encoding="utf-8"))
    read = [(s, read_function_statement(s)) for s in statements]
    creates = [f for _, f in read if f is not None and f.kind == "create"]
    names = [f.signatures[0].signature for f in creates]
    attached: dict[Signature, list[FunctionStatement]] = {name: [] for name in names}
    others = []
    for statement, function in read:
        if function is not None and function.kind == "create":
            continue
        owner = None if function is None else _attached_to(function, names)
        if function is None or owner is None:
            others.append(statement)
        else:
            attached[owner].append(function)
    functions = tuple(SqlFunction(path.name, create, tuple(attached[name]))
                      for create, name in zip(creates, names, strict=True))
    return SqlFile(path.name, functions, tuple(others))


def _attached_to(function: FunctionStatement, names: list[Signature]) -> Signature | None:
    """The function of this file a REVOKE/GRANT or COMMENT belongs with (the last it names)."""
    if function.kind not in ("privilege", "comment"):
        return None
    named = [s.signature for s in function.signatures]
    if not all(n in names for n in named):
        return None
    return max(named, key=names.index)


def comment_value(statement: FunctionStatement | None) -> str | None:
    """The text a COMMENT statement sets, from its IS on (None for none or IS NULL)."""
    if statement is None or statement.is_null:
        return None
    tokens = statement.statement.tokens[statement.signatures[0].next_index:]
    return statement.statement.text[tokens[0].start:]


# ---- the plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """A function of the changed files that this revision writes."""

    function: SqlFunction
    previous: Definition | None
    body_changed: bool

    @property
    def up_review(self) -> list[str]:
        """What the author must look at in the upgrade for this function."""
        if self.previous is None:
            revoked = any(s.kind == "privilege" and s.statement.words(1) == ["revoke"]
                          for s in self.function.attached)
            return [] if revoked else [
                "a new function without REVOKE EXECUTE ... FROM PUBLIC: anyone may call it"]
        return self._replace_review()

    @property
    def down_review(self) -> list[str]:
        """What the author must look at in the downgrade for this function."""
        if self.previous is None:
            return []
        return self._replace_review() + [
            f"the upgrade runs {_first_line(s.statement)}, which the landed revisions never ran "
            "on this function: undo it here if it changes its privileges"
            for s in self.function.attached if s.kind == "privilege"
            for at in s.signatures if at.signature == self.function.signature
            and privilege_key(s, at) not in self.previous.privilege_keys]

    def _replace_review(self) -> list[str]:
        assert self.previous is not None
        if self.body_changed and (
                parameter_names(self.previous.create) != parameter_names(self.function.create)
                or result_type(self.previous.create) != result_type(self.function.create)):
            return [f"its parameter names or result type differ from revision "
                    f"{self.previous.revision}'s: CREATE OR REPLACE cannot change them; DROP "
                    f"FUNCTION {self.function.signature} first, then grant its privileges again"]
        return []


def _first_line(statement: Statement) -> str:
    return statement.text.splitlines()[0].rstrip(";")


@dataclass(frozen=True)
class Plan:
    """Everything the new revision's files say, before it is written out."""

    revision: str
    previous: str
    slug: str
    message: str
    files: tuple[SqlFile, ...]
    changes: tuple[Change, ...]
    unchanged: tuple[SqlFunction, ...]
    removed: tuple[Definition, ...]
    unlisted: tuple[SqlFunction, ...]

    @property
    def stem(self) -> str:
        """``NNNN_slug``."""
        return f"{self.revision}_{self.slug}"


def effective_text(definition: Definition) -> str | None:
    """The landed definition as one CREATE OR REPLACE: its last CREATE with the search_path
    of the ALTER FUNCTION statements after it (None when another ALTER came after it)."""
    text = or_replace(definition.create)
    for _, alter in definition.alters:
        value = altered_search_path(alter)
        replaced = None if value is None else with_search_path(definition.create, value)
        if replaced is None:
            return None
        text = replaced
    return text


def _change(function: SqlFunction, landed: dict[Signature, Definition]) -> Change | None:
    previous = landed.get(function.signature)
    if previous is None:
        return Change(function, None, body_changed=True)
    body_changed = effective_text(previous) != or_replace(function.create)
    if not body_changed and comment_value(previous.comment) == comment_value(function.comment):
        return None
    return Change(function, previous, body_changed)


def plan(versions: Path, sql_dir: Path, *, revision: str, slug: str, changed: list[str],
         message: str) -> Plan:
    """Work out the new revision from the landed ones and the changed files of ``sql_dir``."""
    revisions = read_revisions(versions)
    if not revisions:
        raise RevisionError(f"no revisions in {versions}")
    _check_new(versions, revisions, revision, slug)
    landed = landed_functions(revisions)
    every_file = {p.name: read_sql_file(p) for p in sorted(sql_dir.glob("*.sql"))}
    unknown = [name for name in changed if name not in every_file]
    if unknown:
        raise RevisionError(f"not in {sql_dir}: {', '.join(unknown)}")
    files = tuple(every_file[name] for name in sorted(set(changed)))
    listed = [f for file in files for f in file.functions]
    changes = tuple(c for c in (_change(f, landed) for f in listed) if c is not None)
    written = {c.function.signature for c in changes}
    defined = {f.signature for file in every_file.values() for f in file.functions}
    others = [f for file in every_file.values() if file.name not in changed
              for f in file.functions]
    return Plan(
        revision=revision, previous=revisions[-1].revision, slug=slug, message=message,
        files=files, changes=changes,
        unchanged=tuple(f for f in listed if f.signature not in written),
        removed=tuple(sorted((d for s, d in landed.items() if s not in defined),
                             key=lambda d: d.order)),
        unlisted=tuple(f for f in others if _change(f, landed) is not None),
    )


def _check_new(versions: Path, revisions: list[Revision], revision: str, slug: str) -> None:
    if not _REVISION_ID.fullmatch(revision):
        raise RevisionError(f"revision id {revision!r} is not four digits (e.g. 0008)")
    if not _SLUG.fullmatch(slug):
        raise RevisionError(f"slug {slug!r} is not lower_case_words")
    if revision in {r.revision for r in revisions}:
        raise RevisionError(f"revision {revision} exists already")
    if revision <= revisions[-1].revision:
        raise RevisionError(f"revision {revision} does not come after {revisions[-1].revision}")
    taken = [p.name for p in versions.glob(f"{revision}_*")]
    if taken:
        raise RevisionError(f"files for {revision} exist already: {', '.join(taken)}")


# ---- the files --------------------------------------------------------------------------

_DDL_BEFORE = "-- ==== EDIT: DDL before the functions"
_DDL_AFTER = "-- ==== EDIT: DDL after the functions"
_DDL_END = "-- ==== end of DDL ===="


def _review(notes: list[str]) -> list[str]:
    return [line for note in notes
            for line in textwrap.wrap(note, 94, initial_indent="-- REVIEW: ",
                                      subsequent_indent="--   ")]


def render_module(plan: Plan, today: datetime.date) -> str:
    """The revision module, in the shape of every landed one."""
    summary = textwrap.fill(plan.message.rstrip(".") + ".", 99)
    return f'''"""{summary}

Revision ID: {plan.revision}
Revises: {plan.previous}
Create Date: {today.isoformat()}
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "{plan.revision}"
down_revision = "{plan.previous}"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "{plan.stem}.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "{plan.stem}_down.sql")
'''


def _checklist(plan: Plan) -> list[str]:
    lines = []
    for file in plan.files:
        for statement in file.others:
            first = statement.text.splitlines()[0]
            lines.append(f"--   sql/{file.name}:{statement.line}: {first[:70]}")
    return lines or ["--   (none: the changed files hold functions only)"]


def render_upgrade(plan: Plan) -> str:
    """The upgrade SQL: the DDL sections to write, the functions, the dropped functions."""
    lines = [
        f"-- credits-db {plan.revision}: {plan.message} (frozen; see sql/ for current",
        "-- definitions).",
        "-- EDIT: say what this revision changes and why, what it keeps (privileges,",
        "-- comments) and what it locks. Written by scripts/new_revision.py from",
        *textwrap.wrap(", ".join(f"sql/{f.name}" for f in plan.files) + ".", 90,
                       initial_indent="-- ", subsequent_indent="-- "),
        *_review([f"sql/{f.file} defines {f.signature} differently from the landed revisions, "
                  "but that file is not among the changed ones" for f in plan.unlisted]),
        "",
        f"{_DDL_BEFORE} (tables, columns, schemas, data the functions need) ====",
        f"-- The script writes functions only. Write what takes a database at {plan.previous}",
        "-- to this revision, or delete both DDL sections. The changed files' other",
        "-- statements, as sql/ has them now:",
        *_checklist(plan),
        _DDL_END,
    ]
    for file in plan.files:
        section = [["", *_upgrade_function(c)] for c in plan.changes
                   if c.function.file == file.name]
        if section:
            lines += ["", f"-- ---- {file.name} ----"]
            lines += [line for function in section for line in function][1:]
    lines += ["", f"{_DDL_AFTER} (triggers, policies, grants on the functions) ====",
              _DDL_END]
    if plan.removed:
        lines += ["", "-- ---- no longer in sql/: dropped ----",
                  *_review(["nothing may call these any more (a trigger, a policy, "
                            "another function's SQL-standard body, a client)"])]
        for definition in plan.removed:
            lines += ["-- squawk-ignore ban-drop-function",
                      f"DROP FUNCTION {definition.signature};"]
    return "\n".join(lines) + "\n"


def _upgrade_function(change: Change) -> list[str]:
    lines = _review(change.up_review)
    if change.body_changed:
        lines.append(or_replace(change.function.create))
        lines += ["\n" + s.statement.text for s in change.function.attached]
    elif change.function.comment is not None:
        lines.append(change.function.comment.statement.text)
    else:
        lines.append(f"COMMENT ON FUNCTION {change.function.signature} IS NULL;")
    return lines


def render_downgrade(plan: Plan) -> str:
    """The downgrade SQL: the functions as the landed revisions left them, the new ones dropped."""
    lines = [
        f"-- credits-db {plan.revision} down: back to {plan.previous}. Functions as the landed",
        "-- revisions left them (written by scripts/new_revision.py); EDIT: say what else",
        "-- goes back and what stays on purpose.",
        "",
        f"{_DDL_AFTER.replace('DDL after', 'undo the DDL after')} of the upgrade ====",
        _DDL_END,
    ]
    restored: list[tuple[Definition, Change | None]] = [
        (c.previous, c) for c in plan.changes if c.previous is not None]
    restored += [(d, None) for d in plan.removed]
    for definition, change in sorted(restored, key=lambda pair: pair[0].order):
        lines += ["", *_restore(definition, change)]
    new = [c for c in plan.changes if c.previous is None]
    if new:
        lines += ["", f"-- ---- new in {plan.revision}: dropped ----"]
        lines += [f"DROP FUNCTION {c.function.signature};" for c in reversed(new)]
    lines += ["", f"{_DDL_BEFORE.replace('DDL before', 'undo the DDL before')} of the upgrade"
                  " ====", _DDL_END]
    return "\n".join(lines) + "\n"


def _restore(definition: Definition, change: Change | None) -> list[str]:
    """One function back as the landed revisions left it (``change`` None: it was dropped)."""
    altered = sorted({revision for revision, _ in definition.alters})
    how = f"as revision {definition.revision} defined it" + (
        f", then ALTER FUNCTION in {', '.join(altered)}" if altered else "")
    lines = [f"-- ---- {definition.signature}: {how} ----"]
    if definition.renamed_in is not None and change is None:
        lines += _review([f"renamed or moved by ALTER FUNCTION in {definition.renamed_in}: "
                          "the GRANT and REVOKE statements below name it as before: "
                          "write them by hand"])
    if change is None:
        lines += _review(["dropped by this revision: privileges granted inside DO blocks "
                          "(Supabase's roles, PostgreSQL 15) are not replayed below"])
    else:
        lines += _review(change.down_review)
    if change is None or change.body_changed:
        lines.append(or_replace(definition.create))
        lines += [alter.statement.text for _, alter in definition.alters]
    if change is None:
        lines += ["\n" + text for text in definition.privileges]
    if definition.comment is not None:
        lines.append("\n" + definition.comment.statement.text)
    elif change is not None and change.function.comment is not None:
        lines.append(f"\nCOMMENT ON FUNCTION {definition.signature} IS NULL;")
    return lines


# ---- writing ----------------------------------------------------------------------------


def write(plan: Plan, versions: Path, today: datetime.date) -> list[Path]:
    """Write the three files of ``plan`` and enter them in FROZEN."""
    files = {
        versions / f"{plan.stem}.py": render_module(plan, today),
        versions / f"{plan.stem}.sql": render_upgrade(plan),
        versions / f"{plan.stem}_down.sql": render_downgrade(plan),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    manifest.record(versions, [p.name for p in files])
    return list(files)


def refreeze(versions: Path, revision: str) -> list[str]:
    """Re-enter the files of ``revision`` (``NNNN_*``) in FROZEN; the names entered."""
    names = [p.name for p in sorted(versions.glob(f"{revision}_*")) if p.is_file()]
    if not names:
        raise RevisionError(f"no files for revision {revision} in {versions}")
    manifest.record(versions, names)
    return names


def _summary(plan: Plan, written: list[Path]) -> str:
    lines = [f"wrote {', '.join(p.name for p in written)} (revises {plan.previous}); "
             f"entered them in {manifest.MANIFEST}"]
    lines += [f"  replaced: {c.function.signature}" for c in plan.changes if c.previous]
    lines += [f"  new:      {c.function.signature}" for c in plan.changes if not c.previous]
    lines += [f"  dropped:  {d.signature}" for d in plan.removed]
    lines += [f"  unchanged, left out: {f.signature}" for f in plan.unchanged]
    lines += [f"  warning: sql/{f.file} defines {f.signature} differently from the landed "
              "revisions, but is not listed" for f in plan.unlisted]
    lines.append("next: write the EDIT sections, read every REVIEW line, then "
                 f"python -m scripts.new_revision refreeze {plan.revision}")
    return "\n".join(lines)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.new_revision",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--versions", type=Path, default=ROOT / "alembic" / "versions",
                        help="the revisions folder (default: alembic/versions)")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="write a new revision from changed sql/ files")
    new.add_argument("revision", help="its id, four digits (e.g. 0008)")
    new.add_argument("slug", help="lower_case_words, the file names' second part")
    new.add_argument("files", nargs="+", help="the changed files of sql/ (names or paths)")
    new.add_argument("--message", help="one line for the docstring and header (default: slug)")
    new.add_argument("--sql", type=Path, default=ROOT / "sql", help="default: sql/")
    new.add_argument("--date", type=datetime.date.fromisoformat, default=datetime.date.today())
    again = commands.add_parser("refreeze", help="re-enter an unlanded revision in FROZEN")
    again.add_argument("revision")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = _arguments(argv)
    try:
        if args.command == "refreeze":
            names = refreeze(args.versions, args.revision)
            print(f"entered {', '.join(names)} in {manifest.MANIFEST}")
            return 0
        message = args.message or args.slug.replace("_", " ").capitalize()
        the_plan = plan(args.versions, args.sql, revision=args.revision, slug=args.slug,
                        changed=[Path(f).name for f in args.files], message=message)
        print(_summary(the_plan, write(the_plan, args.versions, args.date)))
        return 0
    except (RevisionError, ValueError) as error:
        print(f"new_revision: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
