"""HTTP connections that stop sending are dropped: no client holds a connection open for nothing.

uvicorn's own ``timeout_keep_alive`` runs only between requests, after a response: a client
that opens a connection and sends nothing, or half a request line, or stops in the middle of an
upload, is otherwise kept for ever (enough of them and the service runs out of descriptors).
:func:`guarded_h11` gives uvicorn's h11 protocol two limits of its own:

- the request head (request line and headers) must be complete within ``head_s`` seconds of
  its first byte, or of the connection's opening;
- while a request body is being read, ``body_idle_s`` seconds without a byte end it, unless the
  service itself paused reading (flow control).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def guarded_h11(head_s: float, body_idle_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with the two limits above (give it as ``uvicorn.Config(http=...)``)."""

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _idle_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(head_s, self._drop)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            self._cancel()
            super().on_response_complete()  # arms uvicorn's keep-alive timer for the next request
            # A pipelined request already buffered may be under way: its body is timed as any other.
            if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
                self._idle_timer = self.loop.call_later(body_idle_s, self._body_idle)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            super().connection_lost(exc)

        def _watch(self) -> None:
            """After bytes arrived: time the head until it is complete, then the body's pauses."""
            if self.transport.is_closing():
                self._cancel()
                return
            state = self.conn.their_state
            if state is h11.IDLE:  # the head of a request is (partly) here: it has head_s to finish
                if self._head_timer is None:
                    self._head_timer = self.loop.call_later(head_s, self._drop)
                return
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            if state is h11.SEND_BODY:
                self._idle_timer = self.loop.call_later(body_idle_s, self._body_idle)

        def _body_idle(self) -> None:
            self._idle_timer = None
            if self.conn.their_state is not h11.SEND_BODY:
                return
            if self.flow.read_paused:  # we are not reading: the client cannot be blamed
                self._idle_timer = self.loop.call_later(body_idle_s, self._body_idle)
                return
            self._drop()

        def _drop(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()  # an app waiting for the body is told the client left

        def _cancel(self) -> None:
            for timer in (self._head_timer, self._idle_timer):
                if timer is not None:
                    timer.cancel()
            self._head_timer = self._idle_timer = None

    return GuardedH11Protocol
