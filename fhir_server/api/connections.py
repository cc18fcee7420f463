"""How long a client may take to send its request: uvicorn's HTTP protocol with receive deadlines.

uvicorn bounds only the idle time between two requests of a connection (`timeout_keep_alive`); a
connection that sends nothing, or a request head or body sent a byte at a time (slowloris), is held
for as long as the client likes. This protocol adds, per connection:
- the head (request line and headers) must arrive within `HEAD_SECONDS` of the connection, or of the
  first byte of the request;
- the body must keep coming: at least `MIN_BODY_BYTES` every `BODY_WINDOW_SECONDS`, except while the
  server itself has paused reading (the application has not consumed what it received).
A client that misses a deadline gets `408 Request Timeout` (unless a response has started) and the
connection is closed; an application still waiting for that body sees the client disconnect, which
the pipeline audits as a client error (docs/security.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_SECONDS = 10.0
BODY_WINDOW_SECONDS = 10.0
MIN_BODY_BYTES = 1024
TIMEOUT_MESSAGE = b"The request was not sent in time"
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(TIMEOUT_MESSAGE), TIMEOUT_MESSAGE)
)


class DeadlineProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` whose requests must arrive within the deadlines above."""

    _deadline: asyncio.TimerHandle | None = None
    _body_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(HEAD_SECONDS, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(HEAD_SECONDS, self._head_late)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._body_bytes = 0
        self._arm(BODY_WINDOW_SECONDS, self._body_window)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_late(self) -> None:
        """No request of this connection is being answered (a pipelined one may be): say why."""
        self._deadline = None
        self._cut(answer=self.cycle is None or self.cycle.response_complete)

    def _body_window(self) -> None:
        self._deadline = None
        if self._body_bytes >= MIN_BODY_BYTES or self.flow.read_paused:
            self._body_bytes = 0
            self._arm(BODY_WINDOW_SECONDS, self._body_window)
            return
        self._cut(answer=not self.cycle.response_started)

    def _cut(self, *, answer: bool) -> None:
        if self.transport.is_closing():
            return
        if answer:
            self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()
