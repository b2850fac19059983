"""The redis-py client every part shares, and what a Redis outage looks like to its callers."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["REDIS_DOWN", "REDIS_FAILURES", "Redis", "operator_client", "redis_client"]

#: Redis cannot be reached, or stopped answering (a request answered 503 or 1013, never 500).
REDIS_DOWN: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)
#: Any failure of a Redis command: what a worker pauses on and retries (``chainfeed.workers``).
REDIS_FAILURES: tuple[type[Exception], ...] = (RedisError,)


def redis_client(url: str) -> Redis:
    """A Redis client with bounded timeouts, so an outage surfaces as an error, not a hang.

    A command that finds its pooled connection closed is retried (twice, 50 ms then 100 ms) on a
    fresh one: after a Redis restart every pooled connection is stale, and without a retry each
    failed its next command once (a webhook 503, a WebSocket 1013, a registry entry left behind).
    Commands retried this way are safe to repeat: stream entries carry their feed item id and
    everything else is idempotent or a counter where one extra count does no harm.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        # A burst (hundreds of tabs closing at once) waits up to 5 s for one of the 256
        # connections instead of failing with "Too many connections".
        max_connections=256,
        timeout=5,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=None,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.05), 2),
        retry_on_error=[RedisConnectionError],
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections


def operator_client(url: str) -> Redis:
    """A client for one operator command (``stream info``, ``dlq``): short timeouts, no retries."""
    return Redis.from_url(url, decode_responses=True, socket_connect_timeout=3, socket_timeout=10)
