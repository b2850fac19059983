"""The per-user connection registry every instance shares, and each instance's heartbeat.

The per-user cap spans instances: a sorted set per user holds its connection ids (score: the
Redis clock at connect). Registering and evicting the oldest over the cap is one Lua script, and
the eviction is announced on the user channel, where the owning instance closes it with 4429.
A connection of an instance whose heartbeat stopped no longer counts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from chainfeed.domain.frames import EVICT_PREFIX
from chainfeed.names import INSTANCES_KEY, user_connections_key

__all__ = ["INSTANCE_STALE_MS", "Presence"]

log = structlog.get_logger(__name__)

#: An instance whose heartbeat is older than this is gone: its connections no longer count.
INSTANCE_STALE_MS = 30_000
#: Registry commands per pipeline: a storm's burst goes out in a few round trips, none of them long.
_BATCH_MAX = 500
#: Seconds a registry round trip may take before its batch counts as failed (new tabs get 1013).
REGISTRY_TIMEOUT = 3.0

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


def consumer_of(instance_id: str) -> str:
    """The stream consumer an instance reads as: its id is ``<consumer name>-<6 hex digits>``."""
    return instance_id.rsplit("-", 1)[0]


async def live_consumers(redis: Redis) -> set[str]:
    """The consumer names of instances whose heartbeat is fresh (within ``INSTANCE_STALE_MS``).

    What "is this consumer alive" means everywhere: XINFO's ``idle`` counts from the last read
    attempt only from Redis 7.2 on (before, from the last delivery: a healthy consumer of a quiet
    stream looked dead), and a stopped consumer stays listed in the group until removed.
    """
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    ids = await redis.zrangebyscore(INSTANCES_KEY, now_ms - INSTANCE_STALE_MS, "+inf")
    return {consumer_of(str(instance_id)) for instance_id in ids}


class Presence:
    """This instance's view of the per-user connection sets that every instance shares.

    Registry writes are coalesced: :meth:`register` and :meth:`unregister` queue their command,
    and one flusher task sends everything queued as one pipeline (one pooled connection, one
    round trip) per event-loop turn, or, while a pipeline is in flight, everything queued
    meanwhile as the next one. A burst of 20,000 closing tabs thus needs a single connection of
    the pool where it used to want one each and ran the pool dry. Batches go out one after the
    other in queue order, so a removal queued before a registration reaches Redis before it (a
    reloading tab's old connection never counts against its new one's cap).

    A registration waits for its reply (the count and the evicted ids). A removal does not: the
    closing connection has nothing to wait for and nothing to do about a failure (the entry is
    pruned with its instance or expires with the key), so :meth:`unregister` returns at once and
    a batch that fails is logged once, with the number of removals it held.
    """

    def __init__(self, redis: Redis, *, instance_id: str, max_per_user: int, ttl_ms: int) -> None:
        self.instance_id = instance_id
        self._redis = redis
        self._max_per_user = max_per_user
        self._ttl_ms = ttl_ms
        self._register = redis.register_script(_REGISTER)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        #: Commands waiting for the flusher, each with the future of its caller (None: nobody waits).
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any] | None]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def heartbeat(self) -> None:
        """Say this instance is alive (its connections keep counting)."""
        await self._heartbeat(keys=[INSTANCES_KEY], args=[self.instance_id])

    async def register(self, user_id: int, connection_id: str, channel: str) -> tuple[int, list[str]]:
        """Add a connection; returns the user's connection count and the ids evicted over the cap."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(
            (
                "EVALSHA",
                self._register.sha,
                2,
                user_connections_key(user_id),
                INSTANCES_KEY,
                connection_id,
                self.instance_id,
                self._max_per_user,
                INSTANCE_STALE_MS,
                channel,
                self._ttl_ms,
            ),
            future,
        )
        count, evicted = await future
        return int(count), list(evicted)

    async def unregister(self, user_id: int, connection_id: str) -> None:
        """Queue the removal of a closed connection; returns at once, never fails (see the class)."""
        self._enqueue(("ZREM", user_connections_key(user_id), connection_id), None)

    async def check(self, connections: list[tuple[int, str]]) -> tuple[set[str], set[str]]:
        """Of ``(user id, connection id)``: the ids evicted, and the ids the registry lost.

        Missing from a user's set that still holds others: evicted (an eviction only happens
        when a newer connection joined). Missing with the whole set gone: Redis lost its data (a
        restart without persistence) or the set expired; the caller registers those again.
        """
        if not connections:
            return set(), set()
        await self.flush()  # registrations queued before this question are answered first
        pipe = self._redis.pipeline(transaction=False)
        for user_id, connection_id in connections:
            pipe.zscore(user_connections_key(user_id), connection_id)
            pipe.exists(user_connections_key(user_id))
        replies = await pipe.execute()
        evicted: set[str] = set()
        lost: set[str] = set()
        for n, (_, connection_id) in enumerate(connections):
            score, exists = replies[2 * n], replies[2 * n + 1]
            if score is None:
                (evicted if exists else lost).add(connection_id)
        return evicted, lost

    async def flush(self) -> None:
        """Wait until everything queued so far has been sent (or its batch failed)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def leave(self) -> None:
        """Send the removals still queued, then forget this instance (on shutdown)."""
        await self.flush()
        await self._redis.zrem(INSTANCES_KEY, self.instance_id)

    def _enqueue(self, command: tuple[Any, ...], future: asyncio.Future[Any] | None) -> None:
        self._queue.append((command, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="presence-flusher")

    async def _flush(self) -> None:
        """Send the queue in batches until it is empty (then end; the next command starts anew)."""
        while self._queue:
            batch, self._queue = self._queue[:_BATCH_MAX], self._queue[_BATCH_MAX:]
            await self._send(batch)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any] | None]]) -> None:
        commands = [command for command, _ in batch]
        try:
            replies = await self._pipeline(commands)
            unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if unknown:  # Redis restarted (or SCRIPT FLUSH): load it once, run those again
                await self._redis.script_load(_REGISTER)
                again = await self._pipeline([commands[i] for i in unknown])
                for i, reply in zip(unknown, again, strict=True):
                    replies[i] = reply
        except Exception as exc:  # Redis unreachable or the pool dry: the whole batch failed
            replies = [exc] * len(batch)
        failed_removals, error = 0, None
        for (_, future), reply in zip(batch, replies, strict=True):
            if future is None:
                if isinstance(reply, Exception):
                    failed_removals, error = failed_removals + 1, reply
            elif future.done():
                continue  # its caller gave up (cancelled)
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        if failed_removals:  # the entries are pruned with this instance's heartbeat or expire with the key
            log.warning("connection registry update failed", error=str(error), removals=failed_removals)

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """One round trip; each reply or the error Redis answered for that command.

        Bounded by ``REGISTRY_TIMEOUT``: a Redis that stops answering without closing (the
        shared client has no socket timeout, for the blocking reads elsewhere) would otherwise
        hold every new tab's registration, and the queue behind it, for ever.
        """
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        async with asyncio.timeout(REGISTRY_TIMEOUT):
            return list(await pipe.execute(raise_on_error=False))
