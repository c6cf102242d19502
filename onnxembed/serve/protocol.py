"""Connections: uvicorn's h11 protocol with the limits an unattended server needs against slow or hostile
clients.

In scope: a deadline for each request's headers and body (slowloris, a trickled body, a Content-Length
that promises more than is sent), a deadline for a client to read on while its answer waits to be sent,
a cap on open connections, a bound on the body bytes read and discarded after an early answer (413,
429...). Not in scope: anything about requests' content (gate.py, parsing.py).

uvicorn has none of these on its own: its keep-alive timer runs only between requests and every byte
received cancels it, so a client sending one byte every few seconds holds a connection forever; and a
client that never reads holds its connection (closing waits for the unsent answer to drain) and, with a
second request pipelined behind the first, a request slot too (the route waits to send).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any, ClassVar, cast

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol


def _canned(status: str, message: str, extra: str = "") -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": "server_busy"}})
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return (head + extra + "connection: close\r\n\r\n").encode("latin-1") + body


TOO_MANY_CONNECTIONS = _canned("503 Service Unavailable", "too many open connections", "retry-after: 1\r\n")
TIMED_OUT = _canned("408 Request Timeout", "the request's headers and body did not arrive in time")
LINGER_S = 1.0  # a refused connection stays open this long, so that its request is read, not reset


class GuardedH11Protocol(H11Protocol):
    """One connection. The deadline runs from the connection's start (or a new request's first byte) until
    the request's body is complete; when it passes, the client gets a 408 if no answer was started, and
    the connection is closed (a route still reading the body sees a disconnect). While an answer waits
    unsent, the client must read some of it every ``send_timeout_s``, or the connection is dropped."""

    request_timeout_s: ClassVar[float] = 10.0
    send_timeout_s: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 1024
    max_discard_bytes: ClassVar[int] = 32 << 20

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._discarded = 0
        self._refused = False
        self._send_watch: asyncio.TimerHandle | None = None
        self._sent = 0  # bytes the transport had passed to the socket at the last look

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        refuse = len(self.connections) >= self.max_connections  # counted before this one joins
        super().connection_made(_CountingTransport(transport))  # type: ignore[arg-type]
        if refuse:
            self._refused = True
            self.transport.write(TOO_MANY_CONNECTIONS)
            self.loop.call_later(LINGER_S, self.transport.close)
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and self.conn.their_state is h11.SEND_BODY:
            # answered early (413, 429...): uvicorn reads the rest of the body and drops it; only so much
            self._discarded += len(data)
            if self._discarded > self.max_discard_bytes:
                self._close()
                return
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY or (state is h11.IDLE and self.conn.trailing_data[0]):
            self._arm()  # a request under way: headers or body still to come
        else:
            self._disarm()  # the request is complete (or none began): the answer may take its time
            if state is h11.IDLE:
                self._discarded = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._send_watch is not None:
            self._send_watch.cancel()
            self._send_watch = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_sending()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_sending()  # an answer still in the transport's buffer must drain, even after close()

    def _passed_on(self) -> int:
        """Bytes the transport has passed to the socket so far (handed to it, less what it still holds)."""
        return cast(_CountingTransport, self.transport).written - self.transport.get_write_buffer_size()

    def _watch_sending(self) -> None:
        if self._send_watch is None and self.transport.get_write_buffer_size() > 0:
            self._sent = self._passed_on()
            self._send_watch = self.loop.call_later(self.send_timeout_s, self._check_sending)

    def _check_sending(self) -> None:
        self._send_watch = None
        if self.transport.get_write_buffer_size() == 0:
            return
        if self._passed_on() > self._sent:  # the client read some since the last look
            self._watch_sending()
            return
        # Nothing read for a whole period: drop the connection and its unsent bytes (close() would wait for
        # them forever); a route waiting to send sees a disconnect and frees its request slot.
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # a reset, so that the kernel drops the unsent bytes too instead of retrying them
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.request_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answering = cycle is not None and cycle.response_started and not cycle.response_complete
        discarding = cycle is not None and cycle.response_complete and self.conn.their_state is h11.SEND_BODY
        if not answering and not discarding:  # the client has had no answer to this request yet
            self.transport.write(TIMED_OUT)
        self._close()

    def _close(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the route's receive() says so; its sends are dropped
            self.cycle.message_event.set()
        self.transport.close()


class _CountingTransport:
    """A connection's transport that counts the bytes handed to it, so that the send watchdog sees whether a
    client reads (the buffer alone cannot say: a later answer refills what the client drained)."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)
        self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol(
    request_timeout_s: float, max_connections: int, max_discard_bytes: int, send_timeout_s: float = 30.0
) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    limits = {
        "request_timeout_s": request_timeout_s,
        "send_timeout_s": send_timeout_s,
        "max_connections": max_connections,
        "max_discard_bytes": max_discard_bytes,
    }
    return type("GuardedH11Protocol", (GuardedH11Protocol,), limits)
