"""One WebSocket connection's life: replay what the client missed, then live pushes, without a gap.

The hub has already subscribed the user's channel and registered the connection, so every live
push from then on sits in the connection's queue. A replay (``since`` in the query, or a
``{"type":"resume"}`` frame) runs while the writer is stopped: it sends the user's feed items
with id > since from PostgreSQL, oldest first, and remembers their ids; the writer then starts
on the queued live frames and skips those the replay already sent, until the first live frame
newer than the replay shows the overlap is over. A frame pushed live before a resume frame may
still arrive twice: delivery is at least once, and ``id`` lets the client drop repeats.

A writer task drains the queue, so the socket has one sender at a time (the replay runs only
while there is no writer). It exists only while frames wait: started when one is queued, gone
when the queue is empty. Then, live and with no replay overlap left to skip, the session lends
the socket's direct writer to the hub, which writes pushes itself, with no task switch per frame;
a queued frame takes it back before anything else is sent. The client's frames are read by the
connection's own handler task, which a close request interrupts: an idle connection holds one
task and no queue, event or future of its own (memory per connection, bench/connections.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from chainfeed.delivery.hub import Connection, Outgoing, Resync
from chainfeed.delivery.resume import Frame
from chainfeed.domain.frames import (
    PONG_FRAME,
    PROTOCOL_CLOSE_CODES,
    CloseCode,
    Ping,
    Resume,
    parse_client_message,
)
from chainfeed.errors import ClientGone
from chainfeed.observability.metrics import (
    DELIVERY_LATENCY,
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
    """Where a session's replays come from (:class:`chainfeed.delivery.resume.Replay`)."""

    async def late(self, since: int) -> Sequence[Frame]:
        """Items numbered below ``since`` that were published after it, oldest first."""

    async def page(self, after: int) -> Sequence[Frame]:
        """The next items after ``after``, oldest first; empty at the end."""

    async def recent(self, opened_at: float) -> Sequence[Frame]:
        """Items published since ``opened_at`` (unix seconds), oldest first."""


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

    def __init__(self, conn: Connection, socket: Socket, replay: ReplaySource) -> None:
        self.conn = conn
        self.socket = socket
        self._source = replay
        self._opened = time.time()
        self._writer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[object] | None = None
        self._interrupted = False
        #: True once the replay is done and live frames may be sent.
        self._live = False
        #: Ids the last replay sent, skipped when they also arrive live (None: nothing to skip).
        self._skip: set[int] | None = None
        self._skip_max = 0

    async def run(self, since: int | None) -> int:
        """Serve the connection; returns the close code (the client's or the one the server sent)."""
        conn = self.conn
        self._task = asyncio.current_task()
        conn.on_close = self._interrupt
        conn.on_queued = self._kick
        try:
            if conn.close_request is None:
                if since is not None:
                    await self._replay(since)
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
                self.conn.offer(Outgoing(None, 0, 0.0, PONG_FRAME))
            elif isinstance(message, Resume):
                self._live = False
                self.conn.direct = None
                await self._stop_writer()
                await self._replay(message.since)
                self._go_live()

    async def _replay(self, since: int) -> None:
        """Send the user's items with id > ``since`` (the writer is stopped meanwhile)."""
        replayed: set[int] = set()
        # Lower ids committed after the client's last one first (see storage.feed.feed_resume).
        late = await self._source.late(since)
        for item_id, frame in late:
            await self.socket.send_text(frame)
            replayed.add(item_id)
        WEBSOCKET_MESSAGES_SENT.inc(len(late))
        after = since
        while page := await self._source.page(after):
            for item_id, frame in page:
                await self.socket.send_text(frame)
                replayed.add(item_id)
            WEBSOCKET_MESSAGES_SENT.inc(len(page))
            after = page[-1][0]
        self._skip = replayed or None
        self._skip_max = after
        if replayed:
            self.conn.note_sent(max(replayed))

    async def _resync(self) -> None:
        """Live pushes may have been lost (PUB/SUB reconnected): re-send what followed the last one."""
        if self.conn.last_sent is not None:
            await self._replay(self.conn.last_sent)
            return
        page = await self._source.recent(self._opened)
        for item_id, frame in page:
            await self.socket.send_text(frame)
            self.conn.note_sent(item_id)
        WEBSOCKET_MESSAGES_SENT.inc(len(page))
        self._skip = {item_id for item_id, _ in page} or None
        self._skip_max = self.conn.last_sent or 0

    def _go_live(self) -> None:
        """Replay done: drain what was queued meanwhile, or lend the direct writer."""
        self._live = True
        if not self.conn.queue.empty():
            self._kick()
        else:
            self._lend()

    def _lend(self) -> None:
        if self._live and self._writer is None and self._skip is None and self.conn.queue.empty():
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
        """Send what is queued, in order; end when the queue is empty (then lend direct writes)."""
        conn = self.conn
        queue = conn.queue
        send = self.socket.send_text
        try:
            while not queue.empty():
                queued = queue.get_nowait()
                if isinstance(queued, Resync):  # hub.RESYNC
                    await self._resync()
                    continue
                item_id, entry_ms, arrived, text = queued
                if self._skip is not None and item_id is not None:
                    if item_id > self._skip_max:
                        self._skip = None
                    elif item_id in self._skip:
                        continue
                await send(text)
                if item_id is not None:
                    conn.note_sent(item_id)
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
