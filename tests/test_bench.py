"""The benchmark's quick mode runs, so the bench cannot rot. Speed is never asserted here."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.__main__ import main
from tests.conftest import Server

WORKLOADS = ("1. backfill", "2. signup", "3. debit", "4. hot pool", "5. Python", "6. growth")
IDS = ("backfill", "backfill_cli", "backfill_cli_analyzed", "signup_batch", "signup_single",
       "signup_single_floor", "signup_single_vs_floor", "debit_c1", "debit_c8", "debit_floor_c8",
       "debit_c32", "debit_key_c8", "tpcb_c8", "python_sync",
       "python_async", "pool_c32", "growth_backfill_fn", "growth_backfill_cli", "growth_debit")


def _finite_positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
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


def test_readme_block_is_replaced_by_the_latest_table() -> None:
    readme = f"intro\n{report.README_START}\nold table\n{report.README_END}\nafter\n"
    results = "# title\n\nRun 2026 on 2 cores.\nfsync=on\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nnotes\n"
    updated = report.readme_with_results(readme, results)
    assert "old table" not in updated
    assert "Run 2026 on 2 cores.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n" in updated
    assert updated.startswith("intro\n") and updated.endswith("after\n")
    assert report.readme_with_results(updated, results) == updated
    with pytest.raises(ValueError, match="markers"):
        report.readme_with_results("no markers", results)
