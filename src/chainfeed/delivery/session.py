"""One WebSocket connection's life: its user's feed, in ``seq`` order, without a gap or a repeat.

The hub has already subscribed the user's channel and registered the connection, so every live
push from then on reaches it. The connection then takes its *position* in the feed from
PostgreSQL (the user's last number, or the number of the ``since`` item) and from there on sends
only ``position + 1``: a push it already passed is dropped, a push further ahead first makes it
read the missing items from PostgreSQL (a gap fill, a page at a time), and after the PUB/SUB
connection came back it reads whatever follows its position. The invariant and why it holds on
every path are in docs/design/delivery.md. A resume (``since`` in the query, or a
``{"type":"resume"}`` frame) moves the position to the ``since`` item, replays what follows it
and then says ``{"type":"resumed",...}``.

A writer task drains the queue, so the socket has one sender at a time (a replay runs only
while there is no writer). It exists only while frames wait: started when one is queued, gone
when the queue is empty. Then, live, the session lends the socket's direct writer to the hub,
which writes the next push itself when it is ``position + 1`` (a compare, no query), with no
task switch per frame; anything else is queued for the writer. The client's frames are read by
the connection's own handler task, which a close request interrupts: an idle connection holds
one task and no queue, event or future of its own (memory per connection, bench/connections.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog

from chainfeed.delivery.hub import Connection, Outgoing, Resync
from chainfeed.delivery.resume import REPLAY_PAGE, Frame
from chainfeed.domain.frames import (
    PONG_FRAME,
    PROTOCOL_CLOSE_CODES,
    AppClose,
    Auth,
    CloseCode,
    Ping,
    Resume,
    auth_ok_frame,
    parse_client_message,
    resumed_frame,
)
from chainfeed.errors import AuthError, ClientGone
from chainfeed.observability.metrics import (
    DELIVERY_LATENCY,
    GAP_FILLS,
    STAGE_DURATION,
    WEBSOCKET_ERRORS,
    WEBSOCKET_MESSAGES_SENT,
)

__all__ = [
    "INBOUND_FRAMES_PER_SECOND",
    "ReplaySource",
    "Session",
    "Socket",
]

log = structlog.get_logger(__name__)

#: Client frames allowed per second (any kind); more closes the connection with 1008.
INBOUND_FRAMES_PER_SECOND = 50
#: How long a server-side close may wait for the client to drain what is already buffered.
CLOSE_TIMEOUT = 10.0
_PUSH_STAGE = STAGE_DURATION.labels("push")


class ReplaySource(Protocol):
    """The user's feed in PostgreSQL (:class:`chainfeed.delivery.resume.Replay`)."""

    async def start(self, since: int | None) -> int | None:
        """The position to start at; None when ``since`` is not an item of this user."""

    async def after(self, position: int, *, before: int | None = None) -> Sequence[Frame]:
        """The next page of items after ``position`` (and before ``before``), in feed order."""


class Socket(Protocol):
    """What a session needs of a WebSocket (the web layer adapts its framework's socket)."""

    #: Writes a serialized text frame synchronously (False: not now); None when unsupported.
    direct: Callable[[bytes], bool] | None

    async def send_text(self, text: str) -> None:
        """Send one text frame; raise ClientGone when the connection is closed."""

    async def receive_text(self) -> str | None:
        """The next text frame (None for a binary one); raise ClientGone when the client left."""

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame."""


class Session:
    """Runs one connection until the client leaves or the server closes it."""

    def __init__(
        self,
        conn: Connection,
        socket: Socket,
        replay: ReplaySource,
        refresh: Callable[[str], Awaitable[float]] | None = None,
    ) -> None:
        self.conn = conn
        self.socket = socket
        self._source = replay
        #: Checks a token sent on the open connection: its expiry, or AuthError (4401).
        self._refresh = refresh
        self._writer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[object] | None = None
        self._interrupted = False
        #: True once the replay is done and live frames may be sent.
        self._live = False

    async def run(self, since: int | None) -> int:
        """Serve the connection; returns the close code (the client's or the one the server sent)."""
        conn = self.conn
        self._task = asyncio.current_task()
        conn.on_close = self._interrupt
        conn.on_queued = self._kick
        try:
            if conn.close_request is None and await self._start(since):
                self._go_live()
                await self._read_loop()
            code = conn.close_request[0] if conn.close_request is not None else CloseCode.NORMAL_CLOSURE
        except ClientGone as gone:
            code = gone.code
        except asyncio.CancelledError:
            if not self._interrupted or self._task is None or self._task.uncancel() > 0:
                raise
            assert conn.close_request is not None
            code = conn.close_request[0]
        except Exception:
            log.exception("websocket session failed", user_id=conn.user_id)
            conn.request_close(CloseCode.INTERNAL_ERROR, "internal error")
            code = CloseCode.INTERNAL_ERROR
        finally:
            conn.on_close = conn.on_queued = None
            self._live = False
            conn.direct = None
            await self._stop_writer()
        if code in PROTOCOL_CLOSE_CODES and conn.close_request is None:
            WEBSOCKET_ERRORS.labels("protocol").inc()
        if conn.close_request is not None:
            code, reason = conn.close_request
            with contextlib.suppress(ClientGone, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.socket.close(code, reason)
        return code

    def _interrupt(self) -> None:
        """A close was requested (by the hub, a timer or the writer): stop reading the client."""
        task = self._task
        if task is not None and task is not asyncio.current_task() and not self._interrupted:
            self._interrupted = True
            task.cancel()

    async def _read_loop(self) -> None:
        """Read client frames until the client leaves (ClientGone) or it floods (a close request)."""
        window_start, frames = time.monotonic(), 0
        while True:
            text = await self.socket.receive_text()
            # Inbound flood guard: a browser sends a ping or a resume now and then, never a burst.
            now = time.monotonic()
            if now - window_start >= 1.0:
                window_start, frames = now, 0
            frames += 1
            if frames > INBOUND_FRAMES_PER_SECOND:
                WEBSOCKET_ERRORS.labels("protocol").inc()
                self.conn.request_close(CloseCode.POLICY_VIOLATION, "too many messages")
                return
            if text is None:
                continue
            message = parse_client_message(text)
            if isinstance(message, Ping):
                self.conn.offer(Outgoing(None, None, 0, 0.0, PONG_FRAME))
            elif isinstance(message, Auth):
                if not await self._reauthenticate(message.token):
                    return
            elif isinstance(message, Resume):
                self._live = False
                self.conn.direct = None
                await self._stop_writer()
                if not await self._start(message.since):
                    return
                self._go_live()

    async def _reauthenticate(self, token: str) -> bool:
        """A fresh token of the same user moves the connection's expiry (``auth_ok``); anything
        else closes it with 4401, counted as an auth error. False when it is closing."""
        if self._refresh is None:
            return True
        try:
            expires_at = await self._refresh(token)
        except AuthError as exc:
            WEBSOCKET_ERRORS.labels("auth").inc()
            self.conn.request_close(AppClose.UNAUTHORIZED, exc.reason)
            return False
        self.conn.expire_at(expires_at)
        self.conn.offer(Outgoing(None, None, 0, 0.0, auth_ok_frame(expires_at)))
        return True

    async def _start(self, since: int | None) -> bool:
        """Take the position (the writer is stopped); with ``since``, replay and say ``resumed``.

        False when ``since`` is not an item of this user: the connection is closed with 4400.
        """
        position = await self._source.start(since)
        if position is None:
            WEBSOCKET_ERRORS.labels("protocol").inc()
            self.conn.request_close(AppClose.INVALID_SINCE, "invalid since")
            return False
        self.conn.position = position
        if since is not None:
            replayed = await self._fill(before=None)
            await self.socket.send_text(resumed_frame(since=since, replayed=replayed, seq=self.conn.position))
        return True

    async def _fill(self, *, before: int | None) -> int:
        """Send what follows the position (up to ``before``) from PostgreSQL, a page at a time."""
        sent = 0
        conn = self.conn
        while True:
            page = await self._source.after(conn.position, before=before)
            for _, seq, text in page:
                await self.socket.send_text(text)
                conn.position = seq
            sent += len(page)
            WEBSOCKET_MESSAGES_SENT.inc(len(page))
            if len(page) < REPLAY_PAGE:  # a short page is the last: no query to learn it
                return sent

    def _go_live(self) -> None:
        """Replay done: drain what was queued meanwhile, or lend the direct writer."""
        self._live = True
        if not self.conn.queue.empty():
            self._kick()
        else:
            self._lend()

    def _lend(self) -> None:
        if self._live and self._writer is None and self.conn.queue.empty():
            self.conn.direct = self.socket.direct

    def _kick(self) -> None:
        """A frame was queued: make sure a writer drains the queue (once live)."""
        self.conn.direct = None
        if self._live and self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.conn.id}")

    async def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _write_loop(self) -> None:
        """Send what is queued, in feed order; end when the queue is empty (then lend direct writes)."""
        conn = self.conn
        queue = conn.queue
        send = self.socket.send_text
        try:
            while not queue.empty():
                queued = queue.get_nowait()
                if isinstance(queued, Resync):  # hub.RESYNC: pushes may have been lost meanwhile
                    GAP_FILLS.labels("resync").inc()
                    await self._fill(before=None)
                    continue
                _, seq, entry_ms, arrived, text = queued
                if seq is not None:
                    if seq <= conn.position:
                        continue  # sent already
                    if seq > conn.position + 1:  # something before it is missing or late
                        GAP_FILLS.labels("gap").inc()
                        await self._fill(before=seq)
                        if seq <= conn.position:
                            continue
                    conn.position = seq
                await send(text)
                WEBSOCKET_MESSAGES_SENT.inc()
                if entry_ms:
                    DELIVERY_LATENCY.observe(max(0.0, time.time() - entry_ms / 1000))
                    _PUSH_STAGE.observe(time.monotonic() - arrived)
        except ClientGone:
            return
        except Exception:
            log.exception("websocket writer failed", user_id=self.conn.user_id)
            self.conn.request_close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None
        self._lend()
