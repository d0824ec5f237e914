"""Just enough of PostgreSQL's SQL to read credits-db's own files.

Splits a file into statements the way psql does (quotes, dollar quotes,
comments, and the ``BEGIN ATOMIC ... END`` body of a SQL-standard function,
whose inner semicolons do not end the statement), and reads the function
statements: ``CREATE [OR REPLACE] FUNCTION``, ``COMMENT ON FUNCTION``,
``GRANT``/``REVOKE ... ON FUNCTION``, ``ALTER FUNCTION`` and ``DROP FUNCTION``,
each with the signatures it names, normalised so that ``f(p_entry
public.credit_usage_log)`` and ``f(credit_usage_log)`` are one function.

It is not a parser: it reads what these files contain and says where it stops
(an unreadable signature is reported, never guessed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_WORD = re.compile(r"[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*")
_DOLLAR = re.compile(r"\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")
_NUMBER = re.compile(r"[0-9][0-9._]*(?:[eE][+-]?[0-9]+)?")
_PARAM = re.compile(r"\$[0-9]+")


@dataclass(frozen=True)
class Token:
    """One lexical token: ``word``, ``quoted`` (identifier), ``string``, ``number`` or ``op``."""

    kind: str
    text: str
    start: int
    end: int

    def is_word(self, *words: str) -> bool:
        """True for an unquoted word equal (case-insensitively) to one of ``words``."""
        return self.kind == "word" and self.text.lower() in words


@dataclass(frozen=True)
class Statement:
    """One statement: its text from its first token through its semicolon."""

    text: str
    tokens: tuple[Token, ...]
    line: int

    def words(self, count: int) -> list[str]:
        """The first ``count`` tokens, lower-cased (``''`` for a token that is not a word)."""
        return [t.text.lower() if t.kind == "word" else "" for t in self.tokens[:count]]


class SqlTextError(ValueError):
    """The text is not SQL these tools can read (an unterminated quote or comment)."""


def _skip_block_comment(source: str, position: int) -> int:
    depth, index = 1, position + 2
    while depth:
        opening, closing = source.find("/*", index), source.find("*/", index)
        if closing < 0:
            raise SqlTextError(f"unterminated /* comment at offset {position}")
        if 0 <= opening < closing:
            depth, index = depth + 1, opening + 2
        else:
            depth, index = depth - 1, closing + 2
    return index


def _end_of_quoted(source: str, position: int, quote: str, *, backslash: bool) -> int:
    index = position + 1
    while True:
        found = source.find(quote, index)
        if found < 0:
            raise SqlTextError(f"unterminated {quote} quote at offset {position}")
        if backslash and _backslashes_before(source, found) % 2 == 1:
            index = found + 1
        elif source.startswith(quote * 2, found):
            index = found + 2
        else:
            return found + 1


def _backslashes_before(source: str, position: int) -> int:
    count = 0
    while source[position - count - 1] == "\\":
        count += 1
    return count


def _dollar_quote(source: str, position: int) -> int | None:
    """The end of a dollar-quoted string starting at ``position``, or None if it is not one."""
    if position and (_WORD.match(source[position - 1]) or source[position - 1].isdigit()):
        return None
    match = _DOLLAR.match(source, position)
    if match is None:
        return None
    delimiter = match.group(0)
    closing = source.find(delimiter, match.end())
    if closing < 0:
        raise SqlTextError(f"unterminated {delimiter} quote at offset {position}")
    return closing + len(delimiter)


def tokenize(source: str) -> list[Token]:
    """Every token of ``source``, comments and whitespace left out."""
    tokens: list[Token] = []
    index = 0
    while index < len(source):
        char = source[index]
        if char.isspace():
            index += 1
        elif source.startswith("--", index):
            newline = source.find("\n", index)
            index = len(source) if newline < 0 else newline + 1
        elif source.startswith("/*", index):
            index = _skip_block_comment(source, index)
        else:
            token = _token_at(source, index)
            tokens.append(token)
            index = token.end
    return tokens


def _token_at(source: str, index: int) -> Token:
    char = source[index]
    if char == "'":
        return Token("string", "", index, _end_of_quoted(source, index, "'", backslash=False))
    if char == '"':
        end = _end_of_quoted(source, index, '"', backslash=False)
        return Token("quoted", source[index + 1:end - 1].replace('""', '"'), index, end)
    if char == "$":
        dollar_end = _dollar_quote(source, index)
        if dollar_end is not None:
            return Token("string", "", index, dollar_end)
        param = _PARAM.match(source, index)
        if param is not None:
            return Token("op", param.group(0), index, param.end())
    word = _WORD.match(source, index)
    if word is not None:
        if word.group(0) in ("E", "e") and source.startswith("'", word.end()):
            end = _end_of_quoted(source, word.end(), "'", backslash=True)
            return Token("string", "", index, end)
        return Token("word", word.group(0), index, word.end())
    number = _NUMBER.match(source, index)
    if number is not None:
        return Token("number", number.group(0), index, number.end())
    return Token("op", char, index, index + 1)


@dataclass
class _Splitter:
    """psql's rule for where a statement ends (see psqlscan.l): a semicolon outside
    parentheses, and, in CREATE [OR REPLACE] FUNCTION/PROCEDURE, outside BEGIN ... END
    (a CASE inside a BEGIN ends with END too)."""

    source: str
    statements: list[Statement] = field(default_factory=list)
    current: list[Token] = field(default_factory=list)
    parens: int = 0
    begins: int = 0

    def feed(self, token: Token) -> None:
        self.current.append(token)
        if token.kind == "op" and token.text in "([":
            self.parens += 1
        elif token.kind == "op" and token.text in ")]":
            self.parens -= 1
        elif token.kind == "word" and self.parens == 0 and self._in_routine():
            self._count_block(token)
        elif token.kind == "op" and token.text == ";" and self.parens == 0 and self.begins == 0:
            self._close()

    def _in_routine(self) -> bool:
        words = [t.text.lower() if t.kind == "word" else "" for t in self.current[:4]]
        return words[:1] == ["create"] and (
            words[1:2] in (["function"], ["procedure"])
            or (words[1:3] == ["or", "replace"] and words[3:4] in (["function"], ["procedure"]))
        )

    def _count_block(self, token: Token) -> None:
        word = token.text.lower()
        if word == "begin" or (word == "case" and self.begins):
            self.begins += 1
        elif word == "end" and self.begins:
            self.begins -= 1

    def _close(self) -> None:
        first, last = self.current[0], self.current[-1]
        line = self.source.count("\n", 0, first.start) + 1
        self.statements.append(
            Statement(self.source[first.start:last.end], tuple(self._relative()), line)
        )
        self.current, self.parens, self.begins = [], 0, 0

    def _relative(self) -> list[Token]:
        offset = self.current[0].start
        return [Token(t.kind, t.text, t.start - offset, t.end - offset) for t in self.current]


def split_statements(source: str) -> list[Statement]:
    """The statements of ``source`` in order (token offsets relative to each statement)."""
    splitter = _Splitter(source)
    for token in tokenize(source):
        splitter.feed(token)
    if splitter.current:
        raise SqlTextError(f"statement without a closing semicolon: {splitter._relative()[0].text}")
    return splitter.statements


# ---- signatures -------------------------------------------------------------------------

_MODES = {"in", "out", "inout", "variadic"}
_TYPE_ALIASES = {
    "int": "integer", "int4": "integer", "int8": "bigint", "int2": "smallint",
    "bool": "boolean", "float8": "double precision", "float4": "real", "float": "double precision",
    "varchar": "character varying", "char": "character", "decimal": "numeric",
    "timestamptz": "timestamp with time zone", "timestamp": "timestamp without time zone",
    "timetz": "time with time zone", "time": "time without time zone",
}
# A parameter that starts with one of these and goes on with one of the
# continuations is a type of several words, not a name followed by a type.
_MULTIWORD_STARTS = {"double", "character", "char", "bit", "time", "timestamp", "national"}
_MULTIWORD_NEXT = {"precision", "varying", "with", "without", "character", "char", "(", "["}


@dataclass(frozen=True, order=True)
class Signature:
    """A function's identity: schema, name and input argument types (normalised)."""

    schema: str
    name: str
    arg_types: tuple[str, ...]

    def __str__(self) -> str:
        name = _render_identifier(self.name)
        if self.schema != "public":
            name = f"{_render_identifier(self.schema)}.{name}"
        return f"{name}({', '.join(self.arg_types)})"


def _render_identifier(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


def _identifier(token: Token) -> str:
    return token.text if token.kind == "quoted" else token.text.lower()


@dataclass(frozen=True)
class SignatureAt:
    """A signature and where its text lies in the statement (``text[start:end]``)."""

    signature: Signature
    start: int
    end: int
    parameters: tuple[tuple[Token, ...], ...]
    next_index: int


def read_signature(tokens: tuple[Token, ...], index: int) -> SignatureAt:
    """The signature starting at ``tokens[index]``: ``[schema.]name(arguments)``."""
    names = [tokens[index]]
    position = index + 1
    while position + 1 < len(tokens) and tokens[position].text == "." \
            and tokens[position].kind == "op":
        names.append(tokens[position + 1])
        position += 2
    if any(t.kind not in ("word", "quoted") for t in names) or len(names) > 2:
        raise SqlTextError(f"cannot read a function name at {tokens[index].text!r}")
    if position >= len(tokens) or tokens[position].text != "(":
        raise SqlTextError(f"function {names[-1].text} is named without its argument list")
    parameters, close = _parameters(tokens, position)
    schema = _identifier(names[0]) if len(names) == 2 else "public"
    types = tuple(t for t in (_argument_type(p) for p in parameters) if t is not None)
    return SignatureAt(Signature(schema, _identifier(names[-1]), types),
                       tokens[index].start, tokens[close].end, tuple(parameters), close + 1)


def _parameters(tokens: tuple[Token, ...], opening: int) -> tuple[list[tuple[Token, ...]], int]:
    depth, current, parameters = 0, list[Token](), list[tuple[Token, ...]]()
    for position in range(opening, len(tokens)):
        token = tokens[position]
        if token.kind == "op" and token.text in "([":
            depth += 1
            if depth == 1:
                continue
        elif token.kind == "op" and token.text in ")]":
            depth -= 1
            if depth == 0:
                if current:
                    parameters.append(tuple(current))
                return parameters, position
        elif token.kind == "op" and token.text == "," and depth == 1:
            parameters.append(tuple(current))
            current = []
            continue
        current.append(token)
    raise SqlTextError("unbalanced parentheses in an argument list")


def _argument_type(parameter: tuple[Token, ...]) -> str | None:
    """The normalised type of one parameter; None for an OUT parameter (not in the identity)."""
    tokens = list(parameter)
    if tokens and tokens[0].is_word(*_MODES) and len(tokens) > 1:
        if tokens[0].is_word("out"):
            return None
        tokens = tokens[1:]
    for position, token in enumerate(tokens):
        if token.is_word("default") or (token.kind == "op" and token.text == "="):
            tokens = tokens[:position]
            break
    if _has_name(tokens):
        tokens = tokens[1:]
    return normalise_type(tokens)


def _has_name(tokens: list[Token]) -> bool:
    """Whether a parameter (mode and default removed) starts with its name, not its type."""
    if len(tokens) < 2 or tokens[0].kind not in ("word", "quoted") or tokens[1].text in ".([%":
        return False
    return not (tokens[0].is_word(*_MULTIWORD_STARTS) and tokens[1].text.lower() in _MULTIWORD_NEXT)


def normalise_type(tokens: list[Token]) -> str:
    """A type as a function's identity spells it (schema public and typmods left out)."""
    words: list[str] = []
    depth = 0
    for token in tokens:
        if token.kind == "op" and token.text == "(":
            depth += 1
        elif token.kind == "op" and token.text == ")":
            depth -= 1
        elif depth == 0:
            words.append(token.text if token.kind != "word" else token.text.lower())
    text = " ".join(words).replace(" . ", ".").replace(" [", "[").replace("[ ", "[")
    text = text.replace(" ]", "]")
    for schema in ("public.", "pg_catalog."):
        if text.startswith(schema):
            text = text[len(schema):]
    array = ""
    while text.endswith("[]"):
        text, array = text[:-2], array + "[]"
    return _TYPE_ALIASES.get(text, text) + array


# ---- function statements ----------------------------------------------------------------

_ROUTINE = ("function", "procedure", "routine")


@dataclass(frozen=True)
class FunctionStatement:
    """A statement about functions, with the signatures it names.

    ``kind`` is ``create`` (``or_replace`` says which), ``comment``, ``privilege``
    (GRANT or REVOKE), ``alter`` or ``drop``. For ``comment``, ``is_null`` says
    whether it removes the comment; for ``alter``, ``moves`` whether it renames
    the function or moves it to another schema.
    """

    kind: str
    statement: Statement
    signatures: tuple[SignatureAt, ...]
    or_replace: bool = False
    is_null: bool = False
    moves: bool = False


def read_function_statement(statement: Statement) -> FunctionStatement | None:
    """The function statement ``statement`` is, or None if it is about something else."""
    words = statement.words(4)
    if words[:2] in (["create", "function"], ["create", "procedure"]):
        return _create(statement, 2, or_replace=False)
    if words[:3] == ["create", "or", "replace"] and words[3] in _ROUTINE[:2]:
        return _create(statement, 4, or_replace=True)
    if words[:2] == ["comment", "on"] and words[2] in _ROUTINE:
        return _comment(statement)
    if words[:1] in (["grant"], ["revoke"]):
        return _privilege(statement)
    if words[:1] == ["alter"] and words[1] in _ROUTINE:
        return _alter(statement)
    if words[:1] == ["drop"] and words[1] in _ROUTINE:
        return _drop(statement)
    return None


def renamed(statement: FunctionStatement, signature: Signature) -> FunctionStatement:
    """``statement`` naming ``signature``'s schema and name in place of its first function's
    (what it would say had it been written after an ALTER FUNCTION ... RENAME / SET SCHEMA)."""
    at = statement.signatures[0]
    text = statement.statement.text
    name = str(signature).split("(", 1)[0]
    moved = read_function_statement(
        split_statements(text[:at.start] + name + text[text.index("(", at.start):])[0])
    if moved is None:
        raise SqlTextError(f"cannot rename the function of {text.splitlines()[0]!r}")
    return moved


def _create(statement: Statement, index: int, *, or_replace: bool) -> FunctionStatement:
    signature = read_signature(statement.tokens, index)
    return FunctionStatement("create", statement, (signature,), or_replace=or_replace)


def _comment(statement: Statement) -> FunctionStatement:
    signature = read_signature(statement.tokens, 3)
    rest = statement.tokens[signature.next_index:]
    is_null = len(rest) >= 2 and rest[0].is_word("is") and rest[1].is_word("null")
    return FunctionStatement("comment", statement, (signature,), is_null=is_null)


def _privilege(statement: Statement) -> FunctionStatement | None:
    tokens = statement.tokens
    for index, token in enumerate(tokens[:-1]):
        if token.is_word("on"):
            if not tokens[index + 1].is_word(*_ROUTINE):
                return None
            return FunctionStatement("privilege", statement, _signature_list(tokens, index + 2))
    return None


def _alter(statement: Statement) -> FunctionStatement:
    signature = read_signature(statement.tokens, 2)
    rest = statement.tokens[signature.next_index:]
    moves = bool(rest) and (rest[0].is_word("rename") or (
        len(rest) > 1 and rest[0].is_word("set") and rest[1].is_word("schema")))
    return FunctionStatement("alter", statement, (signature,), moves=moves)


def _drop(statement: Statement) -> FunctionStatement:
    index = 2
    if statement.tokens[index].is_word("if"):
        index += 2
    return FunctionStatement("drop", statement, _signature_list(statement.tokens, index))


def _signature_list(tokens: tuple[Token, ...], index: int) -> tuple[SignatureAt, ...]:
    signatures = [read_signature(tokens, index)]
    while signatures[-1].next_index < len(tokens) and tokens[signatures[-1].next_index].text == ",":
        signatures.append(read_signature(tokens, signatures[-1].next_index + 1))
    return tuple(signatures)


def or_replace(create: FunctionStatement) -> str:
    """A CREATE FUNCTION statement's text as CREATE OR REPLACE (unchanged if it is one)."""
    text = create.statement.text
    if create.or_replace:
        return text
    keyword = create.statement.tokens[0]
    return text[:keyword.end] + " OR REPLACE" + text[keyword.end:]


def parameter_names(create: FunctionStatement) -> list[str]:
    """The names of a CREATE FUNCTION's input parameters (``''`` for an unnamed one)."""
    names = []
    for parameter in create.signatures[0].parameters:
        tokens = list(parameter)
        if tokens and tokens[0].is_word(*_MODES) and len(tokens) > 1:
            if tokens[0].is_word("out"):
                continue
            tokens = tokens[1:]
        for position, token in enumerate(tokens):
            if token.is_word("default") or token.text == "=":
                tokens = tokens[:position]
                break
        names.append(_identifier(tokens[0]) if _has_name(tokens) else "")
    return names


_OPTIONS = {
    "language", "as", "immutable", "stable", "volatile", "strict", "called", "security",
    "set", "cost", "rows", "support", "parallel", "leakproof", "not", "external", "window",
    "transform", "return", "begin",
}


def result_type(create: FunctionStatement) -> str:
    """The RETURNS clause of a CREATE FUNCTION, normalised (``''`` for a procedure)."""
    tokens = create.statement.tokens[create.signatures[0].next_index:]
    if not tokens or not tokens[0].is_word("returns"):
        return ""
    depth, words = 0, []
    for token in tokens[1:]:
        if depth == 0 and token.kind == "word" and token.text.lower() in _OPTIONS:
            break
        if token.kind == "op" and token.text == "(":
            depth += 1
        elif token.kind == "op" and token.text == ")":
            depth -= 1
        words.append(token.text.lower() if token.kind == "word" else token.text)
    return " ".join(words)


def _search_path_value(tokens: tuple[Token, ...], index: int) -> tuple[int, int, int] | None:
    """Where the value of a ``SET search_path = value`` at ``tokens[index]`` lies:
    (start, end) in the text and the index of the token after it; None if it is none."""
    if not (index + 3 < len(tokens) and tokens[index].is_word("set")
            and tokens[index + 1].is_word("search_path")
            and (tokens[index + 2].text == "=" or tokens[index + 2].is_word("to"))):
        return None
    end = index + 3
    while end < len(tokens) and tokens[end].text != ";" and not (
            tokens[end].kind == "word" and tokens[end].text.lower() in _OPTIONS):
        end += 1
    return tokens[index + 3].start, tokens[end - 1].end, end


def altered_search_path(alter: FunctionStatement) -> str | None:
    """The value ``ALTER FUNCTION ... SET search_path = value;`` sets (None for any other ALTER)."""
    tokens = alter.statement.tokens
    found = _search_path_value(tokens, alter.signatures[0].next_index)
    if found is None or found[2] != len(tokens) - 1:
        return None
    return alter.statement.text[found[0]:found[1]]


def with_search_path(create: FunctionStatement, value: str) -> str | None:
    """The CREATE OR REPLACE text with another ``SET search_path`` value (None if it has none)."""
    text = or_replace(create)
    shift = len(text) - len(create.statement.text)
    tokens = create.statement.tokens
    for index in range(create.signatures[0].next_index, len(tokens)):
        if tokens[index].is_word("as", "return", "begin"):
            return None
        found = _search_path_value(tokens, index)
        if found is not None:
            return text[:found[0] + shift] + value + text[found[1] + shift:]
    return None


def privilege_key(statement: FunctionStatement, signature: SignatureAt) -> tuple[object, ...]:
    """What a GRANT or REVOKE does to one of the functions it names, however it spells them."""
    tokens = statement.statement.tokens
    first, last = statement.signatures[0], statement.signatures[-1]
    before = tuple(t.text.lower() for t in tokens if t.end <= first.start)
    after = tuple(t.text.lower() for t in tokens if t.start >= last.end)
    return before, signature.signature, after
