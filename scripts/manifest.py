"""``alembic/versions/FROZEN``: the sha256 of every landed revision file.

One line per file, ``<sha256>  <file name>`` (the format of ``sha256sum``, so
``cd alembic/versions && sha256sum -c FROZEN`` checks it too), sorted by file
name. A revision file is every ``.py`` and ``.sql`` file in the folder.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "FROZEN"
_LINE = re.compile(r"(?P<sha>[0-9a-f]{64})  (?P<name>[^/\s]+)")


@dataclass(frozen=True)
class Mismatch:
    """How the folder disagrees with its manifest, each a sorted list of file names."""

    changed: list[str]
    unlisted: list[str]
    missing: list[str]

    def __bool__(self) -> bool:
        return bool(self.changed or self.unlisted or self.missing)


def sha256(path: Path) -> str:
    """The file's sha256, hex (of its bytes: line endings count)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def revision_files(versions: Path) -> list[str]:
    """The names of the revision files in ``versions`` (``.py`` and ``.sql``), sorted."""
    return sorted(p.name for p in versions.iterdir()
                  if p.is_file() and p.suffix in (".py", ".sql"))


def parse(text: str) -> dict[str, str]:
    """File name to sha256 from a manifest's text; ValueError on a malformed or repeated line."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"{MANIFEST} line {number} is not '<sha256>  <file name>': {line!r}")
        if match["name"] in entries:
            raise ValueError(f"{MANIFEST} line {number} lists {match['name']} again")
        entries[match["name"]] = match["sha"]
    return entries


def read(versions: Path) -> dict[str, str]:
    """The manifest of ``versions`` (empty if there is none yet)."""
    path = versions / MANIFEST
    return parse(path.read_text(encoding="utf-8")) if path.exists() else {}


def render(entries: dict[str, str]) -> str:
    """A manifest's text: one sorted line per file."""
    return "".join(f"{entries[name]}  {name}\n" for name in sorted(entries))


def write(versions: Path, entries: dict[str, str]) -> None:
    """Write the manifest of ``versions``."""
    (versions / MANIFEST).write_text(render(entries), encoding="utf-8")


def record(versions: Path, names: list[str]) -> None:
    """Enter (or re-enter) the current sha256 of the files ``names`` in the manifest."""
    entries = read(versions)
    entries.update({name: sha256(versions / name) for name in names})
    write(versions, entries)


def compare(versions: Path) -> Mismatch:
    """Which listed files changed, which revision files are unlisted, which listed ones are gone."""
    entries = read(versions)
    present = revision_files(versions)
    return Mismatch(
        changed=[name for name in present
                 if name in entries and sha256(versions / name) != entries[name]],
        unlisted=[name for name in present if name not in entries],
        missing=sorted(name for name in entries if name not in present),
    )
