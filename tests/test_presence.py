"""The connection registry under bursts: coalesced writes that a small pool carries, cap intact."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from chainfeed.broker.presence import Presence
from chainfeed.devtools.embedded import free_port
from chainfeed.names import INSTANCES_KEY, user_connections_key


def small_client(url: str, connections: int) -> Redis:
    """A client whose pool holds only ``connections``; a caller waits at most half a second for one."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=0.5, decode_responses=True
    )
    return Redis.from_pool(pool)


@pytest.fixture
async def tiny(migrated: tuple[str, str]) -> AsyncIterator[Redis]:
    """The test Redis through a pool of 4 connections."""
    client = small_client(migrated[1], 4)
    try:
        yield client
    finally:
        await client.aclose()


def presence(redis: Redis, *, max_per_user: int = 5, instance: str = "inst-a") -> Presence:
    return Presence(redis, instance_id=instance, max_per_user=max_per_user, ttl_ms=3_600_000)


async def test_2000_concurrent_registrations_and_removals_share_a_pool_of_4(
    tiny: Redis, redis: Redis
) -> None:
    """Each registration used to hold a pooled connection for its round trip: 2,000 at once ran a
    pool dry (here: 4 connections, 0.5 s wait). Coalesced, every one succeeds, then every removal."""
    registry = presence(tiny)
    users = range(1, 501)
    members = [(user, f"inst-a|{user}-{tab}") for user in users for tab in range(4)]
    began = time.monotonic()
    counts = await asyncio.gather(
        *(registry.register(user, member, f"ch:{user}") for user, member in members)
    )
    assert sorted({count for count, _ in counts}) == [1, 2, 3, 4]
    assert all(evicted == [] for _, evicted in counts)
    assert {await redis.zcard(user_connections_key(user)) for user in users} == {4}
    await asyncio.gather(*(registry.unregister(user, member) for user, member in members))
    await registry.flush()
    assert time.monotonic() - began < 10
    for user in users:
        assert await redis.exists(user_connections_key(user)) == 0
    await registry.leave()
    assert await redis.zscore(INSTANCES_KEY, "inst-a") is None


async def test_the_cap_holds_for_registrations_that_arrive_together(tiny: Redis, redis: Redis) -> None:
    """Seven tabs of one user at once with a cap of 5: the two registered first are evicted."""
    registry = presence(tiny)
    members = [f"inst-a|{n}" for n in range(7)]
    results = await asyncio.gather(*(registry.register(7, member, "ch:7") for member in members))
    assert [count for count, _ in results] == [1, 2, 3, 4, 5, 5, 5]
    assert [evicted for _, evicted in results][5:] == [[members[0]], [members[1]]]
    assert await redis.zrange(user_connections_key(7), 0, -1) == members[2:]
    await registry.leave()


async def test_a_removal_queued_before_a_registration_lands_first(tiny: Redis, redis: Redis) -> None:
    """A reloading tab: its old connection closes, the new one opens at once. The removal is not
    awaited by anyone, yet the new connection finds room under the cap and evicts nobody."""
    registry = presence(tiny, max_per_user=2)
    await registry.register(9, "inst-a|1", "ch:9")
    await registry.register(9, "inst-a|2", "ch:9")
    await registry.unregister(9, "inst-a|2")
    count, evicted = await registry.register(9, "inst-a|3", "ch:9")
    assert (count, evicted) == (2, [])
    assert await redis.zrange(user_connections_key(9), 0, -1) == ["inst-a|1", "inst-a|3"]
    await registry.leave()


async def test_registration_survives_a_script_cache_flush(tiny: Redis, redis: Redis) -> None:
    """After a Redis restart (or SCRIPT FLUSH) the script is loaded again and the batch re-run."""
    registry = presence(tiny)
    await registry.register(3, "inst-a|1", "ch:3")
    await redis.script_flush()
    results = await asyncio.gather(*(registry.register(3, f"inst-a|{n}", "ch:3") for n in (2, 3)))
    assert [count for count, _ in results] == [2, 3]
    await registry.leave()


async def test_without_redis_removals_return_at_once_and_one_warning_per_batch() -> None:
    """Closing a connection neither waits for nor fails with the registry; registering fails."""
    down = small_client(f"redis://127.0.0.1:{free_port()}/0", 4)
    registry = presence(down)
    try:
        with structlog.testing.capture_logs() as logs:
            began = time.monotonic()
            await asyncio.gather(*(registry.unregister(1, f"inst-a|{n}") for n in range(300)))
            assert time.monotonic() - began < 0.1  # queued, not sent
            await registry.flush()
        warnings = [entry for entry in logs if entry["event"] == "connection registry update failed"]
        assert len(warnings) == 1
        assert warnings[0]["removals"] == 300
        with pytest.raises(RedisConnectionError):
            await registry.register(1, "inst-a|x", "ch:1")
    finally:
        await down.aclose()
