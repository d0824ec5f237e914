"""Run pgbench and read its result: tps, failures, and p99 latency from per-transaction logs."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.core import HERE, Sample, percentile


class PgbenchError(RuntimeError):
    """pgbench failed, or some of its transactions did."""


@dataclass(frozen=True)
class Pgbench:
    """A pgbench binary and the server URL to point it at."""

    binary: Path
    transactions: int | None = None
    """Per client, instead of a duration: --quick runs a fixed, small amount of work."""

    def run(self, url: str, *, script: str | None, clients: int, seconds: int,
            defines: dict[str, str] | None = None, options: str | None = None,
            allow_errors: bool = False) -> Sample:
        """One timed run; the sample's value is tps, extras hold latencies and counts."""
        with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as tmp:
            args = [str(self.binary), "-n" if script else "", "-M", "prepared",
                    "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
                    *(["-t", str(self.transactions)] if self.transactions else
                      ["-T", str(seconds)]),
                    "-l", "--log-prefix", f"{tmp}/tx"]
            args = [a for a in args if a]
            if script is not None:
                args += ["-f", str(HERE / f"{script}.sql")]
            for key, value in (defines or {}).items():
                args += ["-D", f"{key}={value}"]
            args.append(url)
            env = dict(os.environ)
            if options:
                env["PGOPTIONS"] = options
            proc = subprocess.run(args, capture_output=True, text=True, check=False,  # noqa: S603
                                  env=env, cwd=tmp)
            out = proc.stdout + proc.stderr
            latencies_ms = _read_logs(Path(tmp))
        tps = _number(r"tps = ([\d.]+) \(without initial connection time\)", out)
        failed = _number(r"number of failed transactions: (\d+)", out, default=0.0)
        processed = _number(r"number of transactions actually processed: (\d+)", out)
        errors = [line for line in out.splitlines()
                  if "ERROR" in line or "aborted" in line.lower()]
        if proc.returncode != 0 or tps is None:
            raise PgbenchError(f"pgbench exited {proc.returncode}:\n{out[-3000:]}")
        if (failed or errors) and not allow_errors:
            raise PgbenchError(f"pgbench reported failures:\n{out[-3000:]}")
        return Sample(tps, {
            "clients": clients,
            "transactions": int(processed or 0),
            "failed": int(failed or 0),
            "latency_avg_ms": sum(latencies_ms) / len(latencies_ms) if latencies_ms else None,
            "latency_p50_ms": percentile(latencies_ms, 0.50),
            "latency_p99_ms": percentile(latencies_ms, 0.99),
        })


def _number(pattern: str, text: str, default: float | None = None) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else default


def _read_logs(directory: Path) -> list[float]:
    """Latencies (ms) of every transaction from pgbench -l logs (field 3, microseconds)."""
    latencies: list[float] = []
    for path in directory.glob("tx.*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                latencies.append(int(fields[2]) / 1000.0)
    return latencies
