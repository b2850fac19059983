"""The WebSocket hub: this process's connections per user, their bounded send queues, and fan-out.

Pushes reach the hub from the user's PUB/SUB channel (:mod:`chainfeed.broker.pubsub`), encoded:
:meth:`Hub.dispatch` hands that one text to every local tab of the user, without ever waiting.
A tab whose writer is idle (nothing queued, live, its socket writable) gets the frame written at
once: serialized once per push, the same bytes for every tab (:attr:`Connection.direct`). Any
other tab gets it queued, in order behind what is waiting; a queue that is full means its client
does not read: that connection is closed with 4408 and nobody else notices. Each queue is drained
by its connection's own writer (:mod:`chainfeed.delivery.session`).

Limits: ``ws_max_total`` per process (a new connection over it is refused with 1013) and
``ws_max_per_user`` across all instances (the oldest connection of the user is closed with 4429,
by whichever instance holds it).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import structlog

from chainfeed.broker.client import Redis
from chainfeed.broker.presence import Presence
from chainfeed.broker.pubsub import Subscriber
from chainfeed.delivery.leanqueue import LeanQueue
from chainfeed.domain.frames import AppClose, Evict, Push, text_frame, unpack
from chainfeed.names import HUB_CHANNEL, USER_CHANNEL_PREFIX, user_channel
from chainfeed.observability.metrics import (
    DELIVERY_LATENCY,
    STAGE_DURATION,
    WEBSOCKET_ACTIVE_CONNECTIONS,
    WEBSOCKET_CONNECTION_DURATION,
    WEBSOCKET_ERRORS,
    WEBSOCKET_MESSAGES_SENT,
)
from chainfeed.observability.tracing import push_span
from chainfeed.workers import supervise

__all__ = ["RESYNC", "Connection", "Hub", "Outgoing", "Resync"]

log = structlog.get_logger(__name__)

#: How long a new connection waits for Redis to confirm its user's subscription.
SUBSCRIBE_TIMEOUT = 5.0
#: Pause before connecting again after the PUB/SUB connection was lost (failures back off more).
RECONNECT_DELAY = 0.1
#: How often this instance renews its heartbeat (well within ``INSTANCE_STALE_MS``).
HEARTBEAT_SECONDS = 5.0
_PUSH_STAGE = STAGE_DURATION.labels("push")


class Outgoing(NamedTuple):
    """A frame waiting in a connection's queue."""

    #: The feed item it carries (None: a control frame such as a pong).
    item_id: int | None
    #: Its position in the user's feed (None: a control frame, sent as it comes).
    seq: int | None
    #: When its stream entry was appended (unix ms; 0: not a push), for the latency histogram.
    entry_ms: int
    #: When the push reached this instance (monotonic; 0.0: not a push).
    arrived: float
    text: str


class Resync:
    """The marker :data:`RESYNC` (its own type, so it can never be mistaken for a frame)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RESYNC"


#: Queued on every connection when PUB/SUB pushes may have been missed (the subscriber
#: reconnected): its session re-sends from PostgreSQL what came after its last frame.
RESYNC = Resync()


@dataclass(eq=False, slots=True)
class Connection:
    """One open WebSocket of ``user_id`` on this instance."""

    id: str
    user_id: int
    queue: LeanQueue[Outgoing | Resync]
    opened_at: float = field(default_factory=time.monotonic)
    #: Set once: why the server closes this connection (code, reason).
    close_request: tuple[int, str] | None = None
    #: The token-expiry timer; set once the connection is fully open (registered and counted).
    expiry: asyncio.TimerHandle | None = None
    #: Writes a serialized frame to the socket now (False: it cannot, queue it). Set by the
    #: session only while its writer is idle and live, so a direct write never overtakes a frame.
    direct: Callable[[bytes], bool] | None = None
    #: The connection's place in its user's feed: the last ``seq`` it sent, or the one it
    #: started after. It sends ``position + 1`` next; a later one only after filling the gap.
    position: int = 0
    #: The session's hooks: a frame was queued (start a writer); a close was requested.
    on_queued: Callable[[], None] | None = None
    on_close: Callable[[], None] | None = None

    def offer(self, item: Outgoing | Resync) -> None:
        """Queue a frame without waiting; a full queue closes the connection as a slow consumer."""
        if self.close_request is not None:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            WEBSOCKET_ERRORS.labels("slow_consumer").inc()
            self.request_close(AppClose.SLOW_CONSUMER, "slow consumer")
            return
        if self.on_queued is not None:
            self.on_queued()

    def expire_at(self, expires_at: float) -> None:
        """Close with 4401 ``token expired`` at ``expires_at`` (unix seconds): set when the hub
        opens the connection, moved by a token refresh."""
        if self.expiry is not None:
            self.expiry.cancel()
        self.expiry = asyncio.get_running_loop().call_later(
            max(0.0, expires_at - time.time()), self.request_close, AppClose.UNAUTHORIZED, "token expired"
        )

    def request_close(self, code: int, reason: str) -> None:
        """Ask the connection's session to close with ``code``; the first request wins."""
        if self.close_request is None:
            self.close_request = (code, reason)
            if self.on_close is not None:
                self.on_close()


@dataclass(eq=False)
class _User:
    """This instance's connections of one user and the subscription that feeds them."""

    ready: asyncio.Future[None]
    connections: dict[str, Connection] = field(default_factory=dict)


class Hub:
    """Open connections of this process, by user, fed from the users' PUB/SUB channels."""

    def __init__(self, redis: Redis, *, presence: Presence, max_total: int, send_queue: int) -> None:
        self.presence = presence
        self.subscriber = Subscriber(
            redis, home_channel=HUB_CHANNEL, on_message=self.dispatch, on_resubscribed=self.resync
        )
        self._max_total = max_total
        self._send_queue = send_queue
        self._users: dict[int, _User] = {}
        self._connections: dict[str, Connection] = {}
        self._reserved = 0
        self._ids = itertools.count(1)
        self._recheck: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Worker: the PUB/SUB connection, reconnected after a loss; on shutdown, leave the registry."""
        try:
            await supervise(
                "hub-subscriber",
                self.subscriber.connect_and_watch,
                idle=lambda: asyncio.sleep(RECONNECT_DELAY),
            )
        finally:
            self.subscriber.fail_waiting()
            try:
                async with asyncio.timeout(2):
                    await self.presence.leave()
            except Exception as exc:  # best effort: its heartbeat ages out anyway
                log.debug("instance deregistration failed", error=str(exc))

    async def run_heartbeat(self) -> None:
        """Worker: say every few seconds that this instance is alive (its connections keep counting)."""
        await supervise(
            "presence-heartbeat", self.presence.heartbeat, idle=lambda: asyncio.sleep(HEARTBEAT_SECONDS)
        )

    @property
    def total(self) -> int:
        """Connections open or being opened on this process."""
        return self._reserved

    def reserve(self) -> bool:
        """Claim a slot under ``ws_max_total`` before accepting; False when the process is full."""
        if self._reserved >= self._max_total:
            return False
        self._reserved += 1
        return True

    def release(self) -> None:
        """Give back a slot whose connection never opened."""
        self._reserved -= 1

    async def open(self, user_id: int, *, expires_at: float) -> tuple[Connection, int]:
        """Register a connection (on a reserved slot) once its user's channel is subscribed.

        Returns it and the user's connection count across instances. Pushes published from now
        on reach its queue; its token's expiry closes it with 4401. On failure the slot is
        released and the error raised.
        """
        conn = Connection(
            id=f"{self.presence.instance_id}|{next(self._ids)}",
            user_id=user_id,
            queue=LeanQueue(self._send_queue),
        )
        user = self._users.get(user_id)
        if user is None:
            user = _User(ready=self.subscriber.subscribe(user_channel(user_id)))
            self._users[user_id] = user
        user.connections[conn.id] = conn
        self._connections[conn.id] = conn
        try:
            await asyncio.wait_for(asyncio.shield(user.ready), SUBSCRIBE_TIMEOUT)
            count, _ = await self.presence.register(user_id, conn.id, user_channel(user_id))
        except BaseException:
            await self.close(conn)
            raise
        conn.expire_at(expires_at)
        WEBSOCKET_ACTIVE_CONNECTIONS.inc()
        return conn, count

    async def close(self, conn: Connection) -> None:
        """Forget a connection: local maps, the subscription if it was the user's last, the registry."""
        if self._connections.pop(conn.id, None) is None:
            return
        self._reserved -= 1
        if conn.expiry is not None:
            conn.expiry.cancel()
            WEBSOCKET_ACTIVE_CONNECTIONS.dec()
            WEBSOCKET_CONNECTION_DURATION.observe(time.monotonic() - conn.opened_at)
        user = self._users.get(conn.user_id)
        if user is not None:
            user.connections.pop(conn.id, None)
            if not user.connections:
                del self._users[conn.user_id]
                self.subscriber.unsubscribe(user_channel(conn.user_id))
        try:
            await self.presence.unregister(conn.user_id, conn.id)
        except Exception as exc:  # the entry ages out with the key; closing must finish
            log.warning("connection registry update failed", error=str(exc))

    def resync(self) -> None:
        """The PUB/SUB connection came back: every open tab catches up from its own position.

        An eviction announced while the connection was down was lost with it, so the registry is
        asked which of this instance's connections it still holds; the others were evicted.
        """
        log.info("pubsub resubscribed; re-syncing local connections", connections=len(self._connections))
        for conn in self._connections.values():
            conn.offer(RESYNC)
        if self._connections and (self._recheck is None or self._recheck.done()):
            self._recheck = asyncio.create_task(self._evict_unregistered(), name="hub-registry-recheck")

    async def _evict_unregistered(self) -> None:
        connections = [conn for conn in self._connections.values() if conn.expiry is not None]
        try:
            evicted, lost = await self.presence.check([(conn.user_id, conn.id) for conn in connections])
            if lost:
                log.warning("connection registry lost entries; registering them again", connections=len(lost))
                await asyncio.gather(
                    *(
                        self.presence.register(c.user_id, c.id, user_channel(c.user_id))
                        for c in connections
                        if c.id in lost
                    )
                )
        except Exception as exc:  # Redis went again: the next resubscription asks again
            log.warning("connection registry re-check failed", error=f"{type(exc).__name__}: {exc}")
            return
        for conn in connections:
            if conn.id in evicted:
                WEBSOCKET_ERRORS.labels("limit").inc()
                conn.request_close(AppClose.TOO_MANY_CONNECTIONS, "too many connections")

    def dispatch(self, channel: str, message: str) -> None:
        """A user-channel message: hand a push to every local tab, or apply a control message."""
        if not channel.startswith(USER_CHANNEL_PREFIX):
            return
        decoded = unpack(message)
        if isinstance(decoded, Push):
            user_id = channel[len(USER_CHANNEL_PREFIX) :]
            user = self._users.get(int(user_id)) if user_id.isdigit() else None
            if user is not None:
                self._push(user.connections, decoded)
        elif isinstance(decoded, Evict):
            evicted = self._connections.get(decoded.connection_id)
            if evicted is not None:
                WEBSOCKET_ERRORS.labels("limit").inc()
                evicted.request_close(AppClose.TOO_MANY_CONNECTIONS, "too many connections")

    def _push(self, connections: dict[str, Connection], decoded: Push) -> None:
        """Write the push to every tab whose next number it is; queue it for the others.

        The frame is serialized once for all tabs; a tab that has already passed it drops it.
        """
        arrived = time.monotonic()
        item: Outgoing | None = None  # made only for a tab that must queue it
        with push_span(decoded.traceparent, item_id=decoded.item_id, connections=len(connections)):
            wire: bytes | None = None
            written = 0
            seq = decoded.seq  # 0: outside the feed order, sent as it comes
            for conn in connections.values():
                if seq and seq <= conn.position:
                    continue  # sent already (a replay, a gap fill, or a repeat)
                direct = conn.direct
                if (
                    (seq == conn.position + 1 or not seq)
                    and direct is not None
                    and conn.close_request is None
                    and conn.queue.empty()
                ):
                    if wire is None:
                        wire = text_frame(decoded.frame)
                    if direct(wire):
                        if seq:
                            conn.position = seq
                        written += 1
                        continue
                if item is None:  # its session sends it in order, filling a gap first
                    item = Outgoing(decoded.item_id, seq or None, decoded.entry_ms, arrived, decoded.frame)
                conn.offer(item)
            if written:  # counted once per push, not per tab (the hot path)
                WEBSOCKET_MESSAGES_SENT.inc(written)
                if decoded.entry_ms:
                    DELIVERY_LATENCY.observe(max(0.0, time.time() - decoded.entry_ms / 1000))
                _PUSH_STAGE.observe(time.monotonic() - arrived)
