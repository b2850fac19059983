"""The composition root: connections to PostgreSQL and Redis and the background workers of one process.

Opened once per process by the web app's lifespan (or by a CLI command) and passed down, so no
module builds its own pool or client. Readiness checks register here by name; ``/readyz``
runs them all and names the part that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from chainfeed.alchemy_api import AlchemyApi
from chainfeed.config import Settings
from chainfeed.delivery import consumer as delivery
from chainfeed.delivery.hub import Hub
from chainfeed.ingest import relay as outbox
from chainfeed.ingest.alchemy_sync import AlchemySync, sync_settings_summary
from chainfeed.ingest.relay import OutboxRelay
from chainfeed.storage import create_pool

__all__ = ["Runtime", "open_runtime", "redis_client"]

log = structlog.get_logger(__name__)
HealthCheck = Callable[[], Awaitable[None]]


@dataclass(eq=False)
class Runtime:
    """What one process shares: settings, the pool, the Redis client, checks and workers."""

    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    checks: dict[str, HealthCheck] = field(default_factory=dict)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    #: Set by ``outbox.start``: the relay that publishes committed feed items.
    relay: OutboxRelay | None = None
    #: Set by ``delivery.start``: this process's WebSocket hub.
    hub: Hub | None = None
    #: Set when Alchemy sync is configured: keeps the webhook's address list in step.
    alchemy_sync: AlchemySync | None = None

    def start_worker(self, name: str, coro: Awaitable[None]) -> asyncio.Task[None]:
        """Run ``coro`` for the life of the process; cancelled (and awaited) on close."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self.workers.append(task)
        return task


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


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Connect, start the workers, and on exit stop them and close every connection."""
    database_url, redis_url = settings.require_services()
    pool = await create_pool(database_url)
    redis = redis_client(redis_url)
    runtime = Runtime(settings=settings, pool=pool, redis=redis)

    async def check_postgres() -> None:
        await pool.fetchval("SELECT 1", timeout=2)

    async def check_redis() -> None:
        await asyncio.wait_for(redis.ping(), timeout=2)

    runtime.checks["postgres"] = check_postgres
    runtime.checks["redis"] = check_redis
    try:
        await outbox.start(runtime)
        await delivery.start(runtime)
        _start_alchemy_sync(runtime)
        yield runtime
    finally:
        for task in runtime.workers:
            task.cancel()
        await asyncio.gather(*runtime.workers, return_exceptions=True)
        await redis.aclose()
        await pool.close()


def _start_alchemy_sync(runtime: Runtime) -> None:
    """Start the watch-list sync when it is configured; say at start-up whether it is on."""
    settings = runtime.settings
    log.info(sync_settings_summary(settings))
    if not settings.alchemy_sync_enabled:
        return
    api = AlchemyApi(
        settings.alchemy_api_url, token=settings.alchemy_auth_token, webhook_id=settings.alchemy_webhook_id
    )
    runtime.alchemy_sync = AlchemySync(runtime.pool, api)

    async def run() -> None:
        assert runtime.alchemy_sync is not None
        try:
            await runtime.alchemy_sync.run()
        finally:
            await api.aclose()

    runtime.start_worker("alchemy-sync", run())
