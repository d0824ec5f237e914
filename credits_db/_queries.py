"""The SQL the Python API sends, loaded from ``queries.sql``."""

from __future__ import annotations

import re
from importlib.resources import files
from typing import LiteralString, cast

_SECTION = re.compile(r"^-- name: (\w+)\n((?:--[^\n]*\n)*)(.*?)(?=^-- name: |\Z)", re.M | re.S)


def parse(text: str) -> dict[str, LiteralString]:
    """Split a queries file into ``{name: statement}`` (description comments dropped)."""
    queries: dict[str, LiteralString] = {}
    for match in _SECTION.finditer(text):
        name, _description, body = match.groups()
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = cast(LiteralString, body.strip().rstrip(";"))
    return queries


QUERIES = parse(files("credits_db").joinpath("queries.sql").read_text(encoding="utf-8"))
