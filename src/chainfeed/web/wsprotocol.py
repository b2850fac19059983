"""uvicorn's sans-I/O WebSocket protocol, closing with the codes ../shared/SPEC.md promises.

ASGI cannot express two things the SPEC needs, so they live at the protocol level:

- Server shutdown closes open connections with **1001** (going away) and waits for the client's
  close frame; uvicorn's own protocol sends 1012 and drops the connection at once.
- A handshake the parser refuses (a request line over 8 KiB) is answered (414) and closed;
  uvicorn would leave the client hanging.
- The hub's fast path: a pre-serialized text frame, built once per push and shared by every tab of
  the user, is written straight to the transport (:meth:`WebSocketProtocol.write_frame`, offered to
  the app as the ASGI scope extension ``DIRECT_SEND``), skipping the per-frame ASGI round trip and
  per-tab serialization. It is never compressed: RFC 7692 lets a sender leave any message
  uncompressed, and a small live push gains little from deflate and costs the most CPU.
- permessage-deflate is offered (SPEC) but sized for many idle connections: no context takeover
  either way, so a connection holds no zlib state between messages (uvicorn's default keeps
  ~45 KB per connection), and messages under ``COMPRESS_MIN_BYTES`` go uncompressed, where
  deflate costs the most CPU for the least gain (bench/connections.py measures both).
- The heartbeat is protocol-level ping/pong (uvicorn's keepalive, every
  CHAINFEED_WS_PING_INTERVAL s; no pong within CHAINFEED_WS_PONG_TIMEOUT s closes with 1011).
  Browsers answer pings by themselves, so no client code is needed. When a client misses its
  pong, the app is told (a disconnect with 1011) so the hub counts it as a protocol error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import ExtensionParameter

from chainfeed.delivery.leanqueue import LeanQueue

__all__ = ["COMPRESS_MIN_BYTES", "DIRECT_SEND", "WebSocketProtocol"]

#: Messages shorter than this are sent uncompressed even when deflate was negotiated.
COMPRESS_MIN_BYTES = 1024

#: ASGI scope extension holding :meth:`WebSocketProtocol.write_frame` of the connection.
DIRECT_SEND = "chainfeed.direct_send"


class _LeanEvent:
    """What uvicorn uses of its per-connection "writable" :class:`asyncio.Event`, allocated lazily."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter


class _ThresholdDeflate(PerMessageDeflate):
    """permessage-deflate that leaves short messages uncompressed (RFC 7692 allows any)."""

    def encode(self, frame: Frame) -> Frame:
        if (
            frame.opcode in (Opcode.TEXT, Opcode.BINARY)
            and frame.fin
            and len(frame.data) < COMPRESS_MIN_BYTES
        ):
            return frame
        return super().encode(frame)


class _DeflateFactory(ServerPerMessageDeflateFactory):
    """Negotiates without context takeover and hands out :class:`_ThresholdDeflate`."""

    def __init__(self) -> None:
        super().__init__(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            server_max_window_bits=12,
            client_max_window_bits=12,
            compress_settings={"memLevel": 5},
        )

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, extension = super().process_request_params(params, accepted_extensions)
        return response, _ThresholdDeflate(
            extension.remote_no_context_takeover,
            extension.local_no_context_takeover,
            extension.remote_max_window_bits,
            extension.local_max_window_bits,
            extension.compress_settings,
        )


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """``websockets-sansio`` with a 1001 shutdown and a keepalive timeout the app hears about."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per-connection memory (bench/connections.py): lean stand-ins for uvicorn's primitives.
        self.queue: Any = LeanQueue()
        self.writable: Any = _LeanEvent()
        if self.config.ws_per_message_deflate:  # our deflate instead of uvicorn's (see above)
            self.conn = ServerProtocol(
                extensions=[_DeflateFactory()],
                max_size=self.config.ws_max_size,
                logger=logging.getLogger("uvicorn.error"),
            )

    def handle_connect(self, event: Any) -> None:
        """As uvicorn, plus the direct writer in the scope of an accepted handshake."""
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][DIRECT_SEND] = self.write_frame

    def write_frame(self, frame: bytes) -> bool:
        """Write a complete serialized text frame now; False when it has to wait in the queue.

        It waits when the connection is not open (closing, closed) or the transport's buffer is
        over its high-water mark (a slow reader: the send queue and its 4408 limit take over).
        """
        if self.close_sent or not self.writable.is_set() or self.conn.state is not State.OPEN:
            return False
        transport = self.transport
        if transport.is_closing():
            return False
        transport.write(frame)
        return True

    def start_keepalive(self) -> None:
        """Called once the handshake is answered: its request and response are not needed again."""
        self.request: Any = None
        self.response: Any = None
        super().start_keepalive()

    def shutdown(self) -> None:
        """Close an open WebSocket with 1001; anything else as uvicorn does."""
        if not self.handshake_complete or self.close_sent or self.transport.is_closing():
            super().shutdown()
            return
        self.stop_keepalive()
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": CloseCode.GOING_AWAY, "reason": "server shutting down"}
        )
        self.conn.send_close(CloseCode.GOING_AWAY, "server shutting down")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        # The client's close frame ends it (handle_close); a silent client is cut off after the timeout.
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)

    def keepalive_timeout(self) -> None:
        """No pong in time: tell the app (1011) before uvicorn fails the connection."""
        if not self.close_sent and not self.transport.is_closing():
            self.queue.put_nowait(
                {
                    "type": "websocket.disconnect",
                    "code": CloseCode.INTERNAL_ERROR,
                    "reason": "keepalive ping timeout",
                }
            )
        super().keepalive_timeout()

    def data_received(self, data: bytes) -> None:
        """As uvicorn, plus: a handshake the parser refused (a request line over websockets' 8 KiB
        limit, say a huge token in the URL) gets the answer websockets prepared (414/400) and the
        connection is closed. uvicorn never sends it, and the client would hang."""
        super().data_received(data)
        parsed = hasattr(self, "scope")  # uvicorn sets it when a request was parsed (handle_connect)
        if parsed or self.conn.handshake_exc is None or self.transport.is_closing():
            return
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()
