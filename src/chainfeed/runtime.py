"""The composition root: the one place that builds the parts of a process and runs their workers.

``open_runtime`` connects to PostgreSQL and Redis, constructs every long-lived part (the outbox
relay and the Redis probe for ingest; the consumer, maintenance, presence and hub for delivery;
the Alchemy sync), starts their workers, and on exit stops the workers and closes every
connection. Workers never touch the runtime: they get their parts as arguments. The web app's
lifespan (or a CLI command) opens it once per process and passes it down; ``/readyz`` runs
``checks`` and names the part that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from chainfeed.alchemy_api import AlchemyApi
from chainfeed.broker.client import REDIS_FAILURES, Redis, redis_client
from chainfeed.broker.logins import LoginLimiter
from chainfeed.broker.presence import Presence
from chainfeed.broker.probe import RedisProbe
from chainfeed.broker.streams import ConsumerGroup
from chainfeed.config import Settings
from chainfeed.delivery.consumer import Consumer
from chainfeed.delivery.hub import Hub
from chainfeed.delivery.maintenance import Maintenance
from chainfeed.domain.ratelimit import Limit, LoginPolicy
from chainfeed.ingest.alchemy_sync import AddressSync, AlchemySync, SyncOff, sync_settings_summary
from chainfeed.ingest.relay import OutboxRelay
from chainfeed.storage import create_pool
from chainfeed.storage.pool import Pool, ping
from chainfeed.workers import OUTAGES

__all__ = ["HealthCheck", "Runtime", "open_runtime"]

log = structlog.get_logger(__name__)
HealthCheck = Callable[[], Awaitable[None]]


@dataclass(eq=False)
class Runtime:
    """What one process shares: settings, connections, its parts, readiness checks and workers."""

    settings: Settings
    pool: Pool
    redis: Redis
    #: Publishes committed feed items to the stream; ingest wakes it after a commit.
    relay: OutboxRelay
    #: Answers "can a webhook's feed items reach the stream right now?" for ingest.
    probe: RedisProbe
    #: This process's WebSocket hub.
    hub: Hub
    #: Failed-login counters per account and per IP.
    logins: LoginLimiter
    #: Keeps the Alchemy webhook's address list in step with the watch lists (or does nothing).
    address_sync: AddressSync
    checks: dict[str, HealthCheck] = field(default_factory=dict)
    workers: list[asyncio.Task[None]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Connect, build every part, start the workers; on exit stop them and close every connection."""
    database_url, redis_url = settings.require_services()
    for name, meant in settings.unknown_variables:  # a typo silently keeps the default otherwise
        log.warning("unknown setting ignored", variable=name, **({"did_you_mean": meant} if meant else {}))
    pool = await create_pool(database_url)
    redis = redis_client(redis_url)
    workers: list[asyncio.Task[None]] = []

    def start(name: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=name)
        workers.append(task)

    try:
        group = ConsumerGroup(
            redis, stream=settings.stream, group=settings.consumer_group, consumer=settings.consumer_name
        )
        presence = Presence(
            redis,
            instance_id=f"{settings.consumer_name}-{secrets.token_hex(3)}",
            max_per_user=settings.ws_max_per_user,
            ttl_ms=(settings.jwt_ttl_seconds + 3600) * 1000,
        )
        hub = Hub(
            redis, presence=presence, max_total=settings.ws_max_total, send_queue=settings.ws_send_queue
        )
        consumer = Consumer(group, pool=pool, settings=settings)
        relay = OutboxRelay(pool=pool, redis=redis, stream=settings.stream)
        runtime = Runtime(
            settings=settings,
            pool=pool,
            redis=redis,
            relay=relay,
            probe=RedisProbe(redis),
            hub=hub,
            logins=LoginLimiter(redis, _login_policy(settings)),
            address_sync=_address_sync(settings, pool),
            workers=workers,
        )
        runtime.checks.update(
            postgres=lambda: ping(pool), redis=lambda: _ping(redis), consumer=consumer.check
        )
        await _move_past_restore(relay)
        start("outbox-relay", relay.run())
        start("hub-subscriber", hub.run())
        start("presence-heartbeat", hub.run_heartbeat())
        start("stream-consumer", consumer.run())
        start("stream-claimer", consumer.run_claims())
        start("stream-maintenance", Maintenance(group, settings=settings).run())
        if isinstance(runtime.address_sync, AlchemySync):
            start("alchemy-sync", runtime.address_sync.run())
        yield runtime
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        with contextlib.suppress(*REDIS_FAILURES):  # a stopped consumer is not left listed as one
            await group.leave()
        await redis.aclose()
        await pool.close()


def _login_policy(settings: Settings) -> LoginPolicy:
    """The SPEC's login limits, with the configured registrations per IP per hour."""
    return LoginPolicy(registrations_per_ip=Limit(settings.registrations_per_ip_hour, 3600))


def _address_sync(settings: Settings, pool: Pool) -> AddressSync:
    """The Alchemy sync when it is configured; say at start-up whether it is on."""
    log.info(sync_settings_summary(settings))
    if not settings.alchemy_sync_enabled:
        return SyncOff()
    api = AlchemyApi(
        settings.alchemy_api_url, token=settings.alchemy_auth_token, webhook_id=settings.alchemy_webhook_id
    )
    return AlchemySync(pool, api)


async def _move_past_restore(relay: OutboxRelay) -> None:
    """Before anything is numbered: catch a PostgreSQL restored behind what was published.

    Best effort: with Redis or PostgreSQL down at start-up the service still starts (the check
    runs again at the next start); the outage is the readiness check's to report.
    """
    try:
        await relay.move_past_restore()
    except OUTAGES as exc:
        log.warning("restore check skipped", error=f"{type(exc).__name__}: {exc}")


async def _ping(redis: Redis) -> None:
    await asyncio.wait_for(redis.ping(), timeout=2)
