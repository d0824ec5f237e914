"""A landed revision never changes: alembic/versions/FROZEN holds every revision file's sha256."""

from __future__ import annotations

from pathlib import Path

import pytest

from credits_db._resources import alembic_dir
from scripts import manifest

VERSIONS = alembic_dir() / "versions"

HOW_TO_ADD = (
    "A landed revision never changes: a change is a new revision. To add one, change sql/, then "
    "`python -m scripts.new_revision new NNNN slug <changed sql files>` writes it and enters its "
    "files in alembic/versions/FROZEN; after editing them (before it lands) "
    "`python -m scripts.new_revision refreeze NNNN`. See docs/migrations.md."
)


def test_no_landed_revision_file_has_changed() -> None:
    changed = manifest.compare(VERSIONS).changed
    assert not changed, (
        f"landed revision files changed since they were entered in FROZEN: {', '.join(changed)}. "
        f"Put them back as they were (git checkout main -- alembic/versions/<file>). {HOW_TO_ADD}"
    )


def test_every_revision_file_is_in_the_manifest() -> None:
    unlisted = manifest.compare(VERSIONS).unlisted
    assert not unlisted, f"revision files not in FROZEN: {', '.join(unlisted)}. {HOW_TO_ADD}"


def test_no_listed_revision_file_is_gone() -> None:
    missing = manifest.compare(VERSIONS).missing
    assert not missing, (
        f"FROZEN lists files that are gone: {', '.join(missing)}. A landed revision is never "
        f"removed. {HOW_TO_ADD}"
    )


def test_manifest_is_one_sorted_line_per_file_and_holds_every_revision() -> None:
    text = (VERSIONS / manifest.MANIFEST).read_text(encoding="utf-8")
    entries = manifest.parse(text)
    assert manifest.render(entries) == text, "FROZEN is not sorted, one '<sha256>  <name>' a line"
    for module in VERSIONS.glob("*.py"):
        stem = module.stem
        assert {f"{stem}.py", f"{stem}.sql", f"{stem}_down.sql"} <= entries.keys(), stem


def test_a_changed_or_unlisted_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "0001_a.py").write_text("revision = '0001'\n")
    (tmp_path / "0001_a.sql").write_text("SELECT 1;\n")
    manifest.record(tmp_path, ["0001_a.py", "0001_a.sql"])
    assert not manifest.compare(tmp_path)
    (tmp_path / "0001_a.sql").write_text("SELECT 2;\n")
    (tmp_path / "0002_b.py").write_text("revision = '0002'\n")
    (tmp_path / "0001_a.py").unlink()
    mismatch = manifest.compare(tmp_path)
    assert (mismatch.changed, mismatch.unlisted, mismatch.missing) == (
        ["0001_a.sql"], ["0002_b.py"], ["0001_a.py"])


@pytest.mark.parametrize("line", [
    "abc  0001_a.py",
    f"{'0' * 64} 0001_a.py",
    f"{'0' * 64}  sub/0001_a.py",
])
def test_a_malformed_manifest_line_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="line 1"):
        manifest.parse(line + "\n")


def test_a_file_listed_twice_is_refused() -> None:
    line = f"{'0' * 64}  0001_a.py\n"
    with pytest.raises(ValueError, match="again"):
        manifest.parse(line * 2)
