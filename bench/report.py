"""results.json and results.md: the only files a run writes (the README links to results.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.core import WORKLOADS, JsonDict, Result


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def write(out: Path, results: list[Result], meta: JsonDict) -> tuple[Path, Path]:
    """Write results.json and results.md into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    data = {**meta, "results": [r.to_json() for r in results]}
    json_path = out / "results.json"
    json_path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    md_path = out / "results.md"
    md_path.write_text(markdown(results, meta))
    return json_path, md_path


def markdown(results: list[Result], meta: JsonDict) -> str:
    machine = meta["machine"]
    settings = machine["settings"]
    lines = [
        f"# credits-db benchmark results ({meta['mode']} mode)",
        "",
        f"Run {meta['started']} on {machine['cpu_count']} cores ({machine['cpu_model']}), "
        f"{machine['memory_bytes'] / 2**30:.1f} GiB RAM, {machine['postgresql_version']}"
        f" ({meta['server']}).",
        f"fsync={settings.get('fsync')}, synchronous_commit={settings.get('synchronous_commit')}, "
        f"full_page_writes={settings.get('full_page_writes')}, "
        f"shared_buffers={settings.get('shared_buffers')}, "
        f"max_wal_size={settings.get('max_wal_size')}, jit={settings.get('jit')}. "
        f"pgbench: {meta['pgbench']}. Total run time {meta['seconds']:.0f} s.",
        "",
        f"A is credits-db, B the bare-SQL baseline, run alternately (A B A B ...), "
        f"{meta['reps']} repetitions each ({meta['sizes']['short_reps']} for the rows whose runs "
        f"take seconds: bulk signup, ANALYZE hazard, cost ladder, Python, the one-session "
        f"debit of workload 7): "
        f"median [min - max]. Ratio = median A / median B "
        f"(for tps higher is better, for times lower is better). "
        f"Method: docs/performance.md.",
        "",
        *([f"Partial run (--only): workloads {', '.join(meta['workloads'])} only.", ""]
          if meta.get("workloads") not in (None, list(WORKLOADS)) else []),
        *([f"A measures candidate SQL (--apply-sql, run on the schema template after the "
           f"migration): {', '.join(meta['apply_sql'])}.", ""] if meta.get("apply_sql") else []),
        "| workload | measure | unit | A: credits-db | B: baseline | ratio | target | met |",
        "|---|---|---|---|---|---:|---:|---|",
    ]
    for r in results:
        a = r.a.summary()
        b = r.b.summary() if r.b is not None else None
        cell_a = f"{_fmt(a['median'])} [{_fmt(a['min'])} - {_fmt(a['max'])}]"
        cell_b = "-" if b is None else f"{_fmt(b['median'])} [{_fmt(b['min'])} - {_fmt(b['max'])}]"
        target = "-" if r.target is None else \
            f"{'<=' if r.direction == 'lower' else '>='} {r.target:.2f}"
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        lines.append(f"| {r.workload} | {r.name} | {r.unit} | {cell_a} | {cell_b} | {ratio} "
                     f"| {target} | {met} |")
    lines += ["", "A and B per row:", ""]
    for r in results:
        b_label = "-" if r.b is None else r.b.label
        lines.append(f"- **{r.id}**: A = {r.a.label}; B = {b_label}")
        lines += [f"  - {note}" for note in r.notes]
    facts = meta.get("facts", {})
    if facts:
        lines += ["", "## Facts", "", "```json", json.dumps(facts, indent=2, default=str), "```"]
    return "\n".join(lines) + "\n"
