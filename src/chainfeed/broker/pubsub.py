"""The receiving side of fan-out: this process's one PUB/SUB connection to the users' channels.

A consumer group hands each stream entry to one process, but the user's tabs may live on any
instance. So the consumer PUBLISHes the encoded frame on the user's channel, and every instance
holding a tab of that user is subscribed to it (only while it holds one, as Centrifugo does).
One PUB/SUB connection per process carries every subscription; (un)subscribe commands go out in
the order the hub asked for them, and a subscription counts as ready only once Redis confirmed
it, so a connection that waits for it cannot miss a push published afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from typing import Any

import hiredis
import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from chainfeed.broker.wire import Wire, open_wire
from chainfeed.names import RESYNC_MARKER_CHANNEL

__all__ = ["Subscriber"]

log = structlog.get_logger(__name__)

_HEALTH_SECONDS = 5.0  # a quiet PUB/SUB connection is PINGed this often; silent 3x as long: reconnect


class Subscriber:
    """The process's one PUB/SUB connection: confirmed subscriptions, messages to ``on_message``.

    Its own socket (address and credentials from the Redis client's pool). Commands are written
    in the order the hub asks; Redis confirms them in that order, which resolves the futures of
    :meth:`subscribe`. When the connection drops, every channel still wanted is subscribed again
    on the new one, then a marker channel: its confirmation means all are back, and
    ``on_resubscribed`` lets the sessions catch up on what was published meanwhile.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        home_channel: str,
        on_message: Callable[[str, str], None],
        on_resubscribed: Callable[[], None] | None = None,
    ) -> None:
        self._redis = redis
        self._home = home_channel
        self._on_message = on_message
        #: Called once every channel is subscribed again after the connection was lost.
        self._on_resubscribed = on_resubscribed
        self._wire: Wire | None = None
        self._connected_once = False
        self._wanted: set[str] = set()
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = {}

    def subscribe(self, channel: str) -> asyncio.Future[None]:
        """Ask for ``channel``; the future resolves once Redis confirmed the subscription.

        Before the first connection it waits for it; once that was lost it fails at once (the
        caller tells its client to come back).
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        wire = self._wire
        if wire is None and self._connected_once:
            future.set_exception(RedisConnectionError("the pubsub connection is down"))
            return future
        self._wanted.add(channel)
        self._waiting.setdefault(channel, collections.deque()).append(future)
        if wire is not None:
            with contextlib.suppress(RedisConnectionError):  # lost: the waiter fails with it
                wire.send(["SUBSCRIBE", channel])
        return future

    def unsubscribe(self, channel: str) -> None:
        """Drop ``channel`` (after any earlier request for it has been sent)."""
        self._wanted.discard(channel)
        if self._wire is not None:
            with contextlib.suppress(RedisConnectionError):  # lost: nothing to drop
                self._wire.send(["UNSUBSCRIBE", channel])

    async def connect_and_watch(self) -> None:
        """One connection's life: connect, subscribe every wanted channel, watch until it is lost.

        A step for a supervised worker (:func:`chainfeed.workers.supervise`), which runs it again
        after a loss and backs off while connecting fails (the error is raised).
        """
        wire = await open_wire(self._redis, self._reply)
        again = self._connected_once
        self._wire, self._connected_once = wire, True
        channels = [self._home, *self._wanted]
        try:
            with contextlib.suppress(RedisConnectionError):  # lost at once: _watch returns
                wire.send(*(["SUBSCRIBE", *channels[i : i + 1000]] for i in range(0, len(channels), 1000)))
                if again:
                    wire.send(["SUBSCRIBE", RESYNC_MARKER_CHANNEL])
            await self._watch(wire)
        finally:
            self._wire = None
            wire.close()
            self.fail_waiting()
        log.warning("pubsub connection lost; reconnecting")

    async def _watch(self, wire: Wire) -> None:
        """Until the connection is lost; PING when quiet, give up on it when nothing comes back."""
        while not wire.lost.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_HEALTH_SECONDS):
                    await asyncio.shield(wire.lost)
            if wire.lost.done():
                return
            quiet = time.monotonic() - wire.last_read
            if quiet > 3 * _HEALTH_SECONDS:
                log.warning("pubsub connection silent; reconnecting", silent_seconds=round(quiet, 1))
                return
            if quiet >= _HEALTH_SECONDS:
                with contextlib.suppress(RedisConnectionError):
                    wire.send(["PING"])

    def _reply(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) >= 3:
            kind = reply[0]
            if kind == "message":
                self._on_message(reply[1], reply[2])
            elif kind == "subscribe":
                channel = reply[1]
                if channel == RESYNC_MARKER_CHANNEL:
                    if self._wire is not None:
                        with contextlib.suppress(RedisConnectionError):
                            self._wire.send(["UNSUBSCRIBE", RESYNC_MARKER_CHANNEL])
                    log.info("pubsub resubscribed", channels=len(self._wanted))
                    if self._on_resubscribed is not None:
                        self._on_resubscribed()
                else:
                    self._resolve(channel)
        elif isinstance(reply, hiredis.ReplyError):
            log.error("pubsub command refused", error=str(reply))
            if self._wire is not None:
                self._wire.close()  # AUTH failed or worse: start over

    def _resolve(self, channel: str) -> None:
        waiters = self._waiting.get(channel)
        if not waiters:
            return  # a re-subscription after a reconnect, or the home channel
        future = waiters.popleft()
        if not waiters:
            del self._waiting[channel]
        if not future.done():
            future.set_result(None)

    def fail_waiting(self) -> None:
        """The connection is gone: subscriptions waiting for it fail (their clients retry)."""
        waiting, self._waiting = self._waiting, {}
        for waiters in waiting.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(RedisConnectionError("the pubsub connection was lost"))
