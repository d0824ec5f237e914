"""A TCP proxy to the test server that can lose one answer (used by the fault tests).

Clients connect to :attr:`CuttableProxy.url` (any driver: psycopg, Node's pg). Once
``cut`` is set, the next connection the server answers loses that answer: its bytes
are thrown away and the client's socket is shut down, while the server's side stays
open, so the server finishes (and commits) the call and the client never hears of
it. ``cut`` then clears itself: a client reconnecting to retry gets through.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict


class CuttableProxy:
    """A loopback proxy to the server of ``url``; :attr:`url` is the same database through it."""

    def __init__(self, url: str) -> None:
        params = conninfo_to_dict(url)
        host = str(params.get("host") or "localhost")
        port = int(params.get("port") or 5432)
        self._upstream: Callable[[], socket.socket]
        if host.startswith("/"):
            path = f"{host}/.s.PGSQL.{port}"

            def unix() -> socket.socket:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                return s
            self._upstream = unix
        else:
            self._upstream = lambda: socket.create_connection((host, port))
        self.cut = threading.Event()
        self._cutting = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = [self._listener]
        credentials = quote(str(params.get("user") or "postgres"), safe="")
        if params.get("password"):
            credentials += ":" + quote(str(params["password"]), safe="")
        self.url = (f"postgresql://{credentials}@127.0.0.1:{self._listener.getsockname()[1]}"
                    f"/{quote(str(params.get('dbname') or 'postgres'), safe='')}")
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = self._upstream()
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True),
                             daemon=True).start()

    def _take_cut(self) -> bool:
        with self._cutting:
            if not self.cut.is_set():
                return False
            self.cut.clear()
            return True

    def _pump(self, source: socket.socket, sink: socket.socket, to_client: bool) -> None:
        lost = False
        try:
            while data := source.recv(65536):
                if to_client and not lost and self._take_cut():
                    lost = True
                    sink.shutdown(socket.SHUT_RDWR)
                if lost:
                    continue  # keep draining the server; send the client nothing
                sink.sendall(data)
        except OSError:
            return
        if to_client:
            # The server closed (after a client's Terminate): so does the client's socket,
            # which a client ending its session waits for. The other way round nothing
            # is passed on: a cut-off client must not end the server's session.
            with suppress(OSError):
                sink.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the listener and every connection through it."""
        for s in self._sockets:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
