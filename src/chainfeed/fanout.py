"""Fan-out across instances: per-user PUB/SUB channels and the per-user connection registry.

A consumer group hands each stream entry to one process, but the user's tabs may live on any
instance. So the consumer PUBLISHes the encoded frame on the user's channel, and every instance
holding a tab of that user is subscribed to it (only while it holds one, as Centrifugo does).
One PUB/SUB connection per process carries every subscription; (un)subscribe commands go out in
the order the hub asked for them, and a subscription counts as ready only once Redis confirmed
it, so a connection that waits for it cannot miss a push published afterwards.

The per-user cap spans instances: a sorted set per user holds its connection ids (score: the
Redis clock at connect). Registering and evicting the oldest over the cap is one Lua script, and
the eviction is announced on the user channel, where the owning instance closes it with 4429.
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
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chainfeed.domain.frames import EVICT_PREFIX
from chainfeed.names import INSTANCES_KEY, RESYNC_MARKER_CHANNEL, user_connections_key
from chainfeed.redis_wire import Wire, open_wire

__all__ = ["INSTANCE_STALE_MS", "Presence", "Subscriber"]

log = structlog.get_logger(__name__)

#: An instance whose heartbeat is older than this is gone: its connections no longer count.
INSTANCE_STALE_MS = 30_000
_HEALTH_SECONDS = 5.0  # a quiet PUB/SUB connection is PINGed this often; silent 3x as long: reconnect
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS[1] user connections, KEYS[2] instances; ARGV member, instance, max, stale ms, channel, ttl ms.
# Returns {connections of the user after this one joined, evicted members}.
_REGISTER = f"""
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
redis.call('ZADD', KEYS[2], now_ms, ARGV[2])
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local instance = string.match(m, '^(.*)|')
  local beat = instance and redis.call('ZSCORE', KEYS[2], instance)
  if not beat or tonumber(beat) < now_ms - tonumber(ARGV[4]) then redis.call('ZREM', KEYS[1], m) end
end
redis.call('ZADD', KEYS[1], now_us, ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
local evicted = {{}}
if n > tonumber(ARGV[3]) then
  evicted = redis.call('ZRANGE', KEYS[1], 0, n - tonumber(ARGV[3]) - 1)
  for _, m in ipairs(evicted) do
    redis.call('ZREM', KEYS[1], m)
    redis.call('PUBLISH', ARGV[5], '{EVICT_PREFIX}' .. m)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {{n - #evicted, evicted}}
"""

# KEYS[1] instances; ARGV instance. Beats with the Redis clock; forgets instances gone for a day.
_HEARTBEAT = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - 86400000)
return now_ms
"""


class Presence:
    """This instance's view of the per-user connection sets that every instance shares."""

    def __init__(self, redis: Redis, *, instance_id: str, max_per_user: int, ttl_ms: int) -> None:
        self.instance_id = instance_id
        self._redis = redis
        self._max_per_user = max_per_user
        self._ttl_ms = ttl_ms
        self._register = redis.register_script(_REGISTER)
        self._heartbeat = redis.register_script(_HEARTBEAT)

    async def heartbeat(self) -> None:
        """Say this instance is alive (its connections keep counting)."""
        await self._heartbeat(keys=[INSTANCES_KEY], args=[self.instance_id])

    async def register(self, user_id: int, connection_id: str, channel: str) -> tuple[int, list[str]]:
        """Add a connection; returns the user's connection count and the ids evicted over the cap."""
        count, evicted = await self._register(
            keys=[user_connections_key(user_id), INSTANCES_KEY],
            args=[
                connection_id,
                self.instance_id,
                self._max_per_user,
                INSTANCE_STALE_MS,
                channel,
                self._ttl_ms,
            ],
        )
        return int(count), list(evicted)

    async def unregister(self, user_id: int, connection_id: str) -> None:
        """Remove a closed connection."""
        await self._redis.zrem(user_connections_key(user_id), connection_id)

    async def leave(self) -> None:
        """Forget this instance (on shutdown)."""
        await self._redis.zrem(INSTANCES_KEY, self.instance_id)


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

    async def run(self) -> None:
        """Worker: connect, subscribe, watch the connection; reconnect with backoff when it drops."""
        delay, first = 0.1, True
        try:
            while True:
                try:
                    wire = await open_wire(self._redis, self._reply)
                except (*_REDIS_DOWN, RedisError) as exc:
                    log.warning("pubsub connection failed", error=str(exc), retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.1
                self._wire, self._connected_once = wire, True
                channels = [self._home, *self._wanted]
                try:
                    with contextlib.suppress(RedisConnectionError):  # lost at once: _watch returns
                        wire.send(
                            *(["SUBSCRIBE", *channels[i : i + 1000]] for i in range(0, len(channels), 1000))
                        )
                        if not first:
                            wire.send(["SUBSCRIBE", RESYNC_MARKER_CHANNEL])
                    first = False
                    await self._watch(wire)
                finally:
                    self._wire = None
                    wire.close()
                    self._fail_waiting()
                log.warning("pubsub connection lost", retry_in=delay)
                await asyncio.sleep(delay)
        finally:
            self._fail_waiting()

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

    def _fail_waiting(self) -> None:
        """The connection is gone: subscriptions waiting for it fail (their clients retry)."""
        waiting, self._waiting = self._waiting, {}
        for waiters in waiting.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(RedisConnectionError("the pubsub connection was lost"))
