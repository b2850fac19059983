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
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chainfeed.domain.frames import EVICT_PREFIX
from chainfeed.names import INSTANCES_KEY, RESYNC_MARKER_CHANNEL, user_connections_key

__all__ = ["INSTANCE_STALE_MS", "Presence", "Subscriber", "publish"]

log = structlog.get_logger(__name__)

#: An instance whose heartbeat is older than this is gone: its connections no longer count.
INSTANCE_STALE_MS = 30_000
_POLL_SECONDS = 1.0  # get_message wakes this often, so redis-py's health check PINGs run
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


async def publish(
    redis: Redis, messages: Sequence[tuple[str, str]], *, then: Callable[[Pipeline], object] | None = None
) -> None:
    """PUBLISH ``(channel, message)`` pairs in one round trip; raises if any could not be sent.

    ``then`` adds commands behind the publishes in the same round trip (the consumer's XACK):
    Redis runs them in order, so they run only once every publish went out.
    """
    if not messages and then is None:
        return
    pipe = redis.pipeline(transaction=False)
    for channel, message in messages:
        pipe.publish(channel, message)
    if then is not None:
        then(pipe)
    await pipe.execute()


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
    """The process's one PUB/SUB connection: confirmed subscriptions, messages to ``on_message``."""

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
        self._lost = False
        self._commands: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = {}

    def subscribe(self, channel: str) -> asyncio.Future[None]:
        """Ask for ``channel``; the future resolves once Redis confirmed the subscription."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(channel, collections.deque()).append(future)
        self._commands.put_nowait(("subscribe", channel))
        return future

    def unsubscribe(self, channel: str) -> None:
        """Drop ``channel`` (after any earlier request for it has been sent)."""
        self._commands.put_nowait(("unsubscribe", channel))

    async def run(self) -> None:
        """Worker: keep the connection, send (un)subscribe commands in order, hand messages on."""
        pubsub = self._redis.pubsub()
        try:
            await self._connect(pubsub)
            while True:
                try:
                    async with asyncio.TaskGroup() as tasks:
                        tasks.create_task(self._send_commands(pubsub))
                        tasks.create_task(self._listen(pubsub))
                except Exception:
                    # A bug, not an outage (those are handled inside): keep the hub fed regardless.
                    log.exception("pubsub worker failed; restarting it")
                    await asyncio.sleep(1.0)
        finally:
            for waiters in self._waiting.values():
                for future in waiters:
                    future.cancel()
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated

    async def _connect(self, pubsub: PubSub) -> None:
        delay = 0.1
        while True:
            try:
                await pubsub.subscribe(self._home)
            except _REDIS_DOWN as exc:
                log.warning("pubsub connection failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                # redis-py may reconnect inside any call (its retries) without raising: learn of
                # every reconnect from the connection itself (after its own re-subscribe callback).
                connection: Any = pubsub.connection  # typed as never None by redis-py
                connection.register_connect_callback(self._reconnected)
                return

    def _reconnected(self, _connection: object) -> None:
        self._lost = True

    async def _send_commands(self, pubsub: PubSub) -> None:
        while True:
            command, channel = await self._commands.get()
            try:
                if command == "subscribe":
                    await pubsub.subscribe(channel)
                else:
                    await pubsub.unsubscribe(channel)
            except _REDIS_DOWN as exc:
                log.warning("pubsub command failed", command=command, error=str(exc))
                if command == "subscribe":
                    self._resolve(channel, exc)

    async def _listen(self, pubsub: PubSub) -> None:
        delay = 0.1
        while True:
            try:
                message = await pubsub.get_message(timeout=_POLL_SECONDS)
            except _REDIS_DOWN as exc:
                # redis-py reconnects on the next read and re-subscribes every channel it knows;
                # pushes published meanwhile never come: the sessions re-sync from PostgreSQL.
                log.warning("pubsub connection lost", error=str(exc), retry_in=delay)
                self._lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            if self._lost:
                await self._mark_resubscribed(pubsub)
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                self._on_message(message["channel"], message["data"])
            elif kind == "subscribe" and message["channel"] == RESYNC_MARKER_CHANNEL:
                self._commands.put_nowait(("unsubscribe", RESYNC_MARKER_CHANNEL))
                if self._on_resubscribed is not None:
                    self._on_resubscribed()
            elif kind == "subscribe":
                self._resolve(message["channel"], None)

    async def _mark_resubscribed(self, pubsub: PubSub) -> None:
        """After a reconnect: a marker SUBSCRIBE behind redis-py's re-SUBSCRIBEs.

        Redis answers commands in order, so when the marker's confirmation comes back every
        channel is subscribed again: from then on pushes arrive live, and what was published
        before is in PostgreSQL, where the hub's sessions look it up (``on_resubscribed``).
        """
        try:
            await pubsub.subscribe(RESYNC_MARKER_CHANNEL)
        except _REDIS_DOWN:
            return  # still down: the next successful read tries again
        self._lost = False

    def _resolve(self, channel: str, error: BaseException | None) -> None:
        waiters = self._waiting.get(channel)
        if not waiters:
            return  # a re-subscription after a reconnect, or the home channel
        future = waiters.popleft()
        if not waiters:
            del self._waiting[channel]
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
