"""A cap on request bodies, applied before anything reads them (:class:`BodySizeLimit`).

FastAPI reads and parses a JSON body before it runs the route's dependencies, so
without a cap a client with no token at all could make the server hold any
amount of memory. The largest body the API takes is a few kilobytes.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_SIZE = 64 * 1024
"""The default cap, in bytes (the largest valid API body is about 2.5 KB)."""


def too_large_body(limit: int) -> bytes:
    """The 413 error body (the API's error envelope)."""
    return json.dumps({"error": {
        "code": "54000", "type": "PayloadTooLarge",
        "message": f"the request body is larger than {limit} bytes",
    }}, separators=(",", ":")).encode()


class BodySizeLimit:
    """Pure ASGI middleware: a request body over ``max_size`` bytes is answered 413.

    A ``Content-Length`` over the cap is refused before the application runs. A
    body without one (chunked) is counted as it streams in: once past the cap,
    the 413 is sent and the application sees the client disconnect, so at most
    ``max_size`` bytes (plus one chunk) are ever held.
    """

    def __init__(self, app: ASGIApp, max_size: int = DEFAULT_MAX_BODY_SIZE) -> None:
        if max_size < 0:
            raise ValueError("max_size must be at least 0")
        self.app = app
        self.max_size = max_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application with the body counted; answer 413 past the cap."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_size:
            await self._refuse(send)
            return
        await _Counted(self, receive, send).run(scope)

    async def _refuse(self, send: Send) -> None:
        body = too_large_body(self.max_size)
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})


class _Counted:
    """One request: its body bytes counted, its response sends watched."""

    def __init__(self, limit: BodySizeLimit, receive: Receive, send: Send) -> None:
        self.limit, self._receive, self._send = limit, receive, send
        self.received = 0
        self.started = self.refused = self.answered = False

    async def run(self, scope: Scope) -> None:
        await self.limit.app(scope, self.receive, self.send)

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit.max_size:
                self.refused = True
                if not self.started:
                    self.answered = True
                    await self.limit._refuse(self._send)
                # The application stops reading, as if the client had gone.
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return  # the 413 was the response; drop the application's own
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def _content_length(scope: Scope) -> int | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

