"""Is Redis answering right now? The webhook asks before it writes anything."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

__all__ = ["RedisProbe"]


class RedisProbe:
    """Is Redis answering right now? One PING in flight at a time, shared by concurrent callers.

    The webhook asks before writing anything, so an outage answers 503 (Alchemy retries) rather
    than piling up feed items that cannot reach anyone. Sharing the in-flight PING keeps the cost
    at about one round trip per burst of webhooks, however many arrive together.
    """

    def __init__(self, redis: Redis, *, timeout: float = 1.0) -> None:
        self._redis = redis
        self._timeout = timeout
        self._inflight: asyncio.Future[bool] | None = None

    async def available(self) -> bool:
        """True when Redis answered a PING started no earlier than one round trip ago."""
        if self._inflight is None:
            future = asyncio.ensure_future(self._ping())
            self._inflight = future
            future.add_done_callback(self._forget)
        return await asyncio.shield(self._inflight)

    def _forget(self, future: asyncio.Future[bool]) -> None:
        if self._inflight is future:
            self._inflight = None

    async def _ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.ping()
        except Exception:  # any failure to answer means "not available"
            return False
        return True
