"""The HTTP listener: uvicorn with read deadlines, so that a slow client holds a connection for seconds,
not forever.

uvicorn on its own times out only idle keep-alive connections, and any byte received cancels even that:
a client that sends its request headers one byte every few seconds (slowloris) would keep a connection,
and its buffers, for as long as it likes. Here a connection must deliver a request's complete headers
within ``header_timeout`` seconds of opening (or of its previous response), and headers are bounded in
size (h11's incomplete-event limit); the body then has ``body_timeout`` seconds (:class:`BodyDeadline`,
an ASGI middleware, answers 408 past it).
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("gptoss.server")

HEADER_TIMEOUT = 10.0  # seconds for a request line and its headers
BODY_TIMEOUT = 30.0  # seconds for a request body, once its headers are in
KEEP_ALIVE = 5.0  # seconds an idle keep-alive connection stays open
MAX_HEADER_BYTES = 64 * 1024  # request line and headers, in bytes


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers do not arrive in time."""

    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        handle = getattr(self, "_header_deadline", None)
        if handle is not None:
            handle.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        log.warning(
            "%s: no complete request headers within %.0f s; connection closed",
            "%s:%d" % self.client if self.client else "a client",
            self.header_timeout,
        )
        self.transport.close()


def protocol_with(header_timeout: float) -> type[DeadlineH11Protocol]:
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,), {"header_timeout": header_timeout})


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **kwargs) -> Config:
    """The uvicorn configuration ``gptoss serve`` runs with (and the tests' live servers); the header
    deadline comes from the app's ``ServerConfig.header_timeout``."""
    header_timeout = app.state.gptoss.config.header_timeout
    return Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol_with(header_timeout),
        timeout_keep_alive=KEEP_ALIVE,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        **kwargs,
    )
