"""Running the credits-db command line as a separate process, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``credits-db ARGS`` in a new process (DATABASE_URL unset unless ``env`` sets it)."""
    return _run([sys.executable, "-m", "credits_db.cli", *args], env)


def cli_without(modules: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process where ``modules`` (comma-separated) cannot be imported:
    what a ``pip install credits-db`` without the extras has."""
    code = ("import sys\n"
            "for name in sys.argv[1].split(','): sys.modules[name] = None  # import fails\n"
            "from credits_db.cli import main\n"
            "sys.exit(main(sys.argv[2:]))")
    return _run([sys.executable, "-c", code, modules, *args], None)


def _run(command: list[str], env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environment.update(env or {})
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=240)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a successful command printed."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
