"""The consumer group on a real Redis: creation, claims, dead letters, trimming, stats, stale consumers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from chainfeed.broker.streams import ConsumerGroup

STREAM, GROUP = "feed:stream", "feed:consumers"
_opened: list[ConsumerGroup] = []


@pytest.fixture(autouse=True)
async def _close_consumers() -> AsyncIterator[None]:
    """Each consumer holds its own connection for its hot commands: close them after the test."""
    yield
    while _opened:
        await _opened.pop().wire.close()


def consumer(redis: Redis, name: str) -> ConsumerGroup:
    group = ConsumerGroup(redis, stream=STREAM, group=GROUP, consumer=name)
    _opened.append(group)
    return group


async def add(redis: Redis, count: int) -> list[str]:
    return [str(await redis.xadd(STREAM, {"user_id": "1", "payload": str(n)})) for n in range(count)]


async def remaining(redis: Redis) -> list[str]:
    return [str(entry_id) for entry_id, _ in await redis.xrange(STREAM) or []]


async def test_group_is_created_once_from_the_start_of_the_stream(redis: Redis) -> None:
    """Entries appended before the group existed are still delivered."""
    ids = await add(redis, 2)
    alive = consumer(redis, "a")
    assert await alive.ensure() is True
    assert await alive.ensure() is False
    assert [entry_id for entry_id, _ in await alive.read(count=10, block_ms=10)] == ids


async def test_claim_takes_idle_entries_and_counts_deliveries(redis: Redis) -> None:
    dead, alive = consumer(redis, "dead"), consumer(redis, "alive")
    await dead.ensure()
    ids = await add(redis, 3)
    assert len(await dead.read(count=10, block_ms=10)) == 3

    assert await alive.claim(min_idle_ms=60_000, count=10) == ([], "")  # not idle long enough
    claimed, cursor = await alive.claim(min_idle_ms=0, count=10)
    assert [(c.entry_id, c.deliveries) for c in claimed] == [(ids[0], 2), (ids[1], 2), (ids[2], 2)]
    assert claimed[0].fields == {"user_id": "1", "payload": "0"}
    assert cursor == ""
    again, _ = await alive.claim(min_idle_ms=0, count=10)
    assert [c.deliveries for c in again] == [3, 3, 3]
    pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert {p["consumer"] for p in pending} == {"alive"}


async def test_claim_pages_with_a_cursor(redis: Redis) -> None:
    dead, alive = consumer(redis, "dead"), consumer(redis, "alive")
    await dead.ensure()
    ids = await add(redis, 5)
    await dead.read(count=10, block_ms=10)
    first, cursor = await alive.claim(min_idle_ms=0, count=2)
    assert [c.entry_id for c in first] == ids[:2]
    assert cursor == ids[1]
    rest, _ = await alive.claim(min_idle_ms=0, count=10, after=cursor)
    assert [c.entry_id for c in rest] == ids[2:]


async def test_claimed_entry_that_no_longer_exists_is_acknowledged(redis: Redis) -> None:
    dead, alive = consumer(redis, "dead"), consumer(redis, "alive")
    await dead.ensure()
    ids = await add(redis, 2)
    await dead.read(count=10, block_ms=10)
    await redis.xdel(STREAM, ids[0])
    claimed, _ = await alive.claim(min_idle_ms=0, count=10)
    assert [c.entry_id for c in claimed] == [ids[1]]
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 1


async def test_dead_letter_copies_and_acknowledges(redis: Redis) -> None:
    group = consumer(redis, "a")
    await group.ensure()
    [entry_id] = await add(redis, 1)
    await group.read(count=10, block_ms=10)
    await group.dead_letter("feed:stream:dead", [(entry_id, {"user_id": "1", "original_id": entry_id})])
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    [(_, fields)] = await redis.xrange("feed:stream:dead") or []
    assert fields == {"user_id": "1", "original_id": entry_id}


async def test_trim_keeps_maxlen_entries_when_all_are_acknowledged(redis: Redis) -> None:
    group = consumer(redis, "a")
    await group.ensure()
    ids = await add(redis, 20)
    await group.read(count=20, block_ms=10)
    await group.ack(ids)
    assert await group.trim(5) == 15
    assert await remaining(redis) == ids[-5:]
    assert await group.trim(5) == 0


async def test_trim_never_removes_a_pending_entry(redis: Redis) -> None:
    """One unacknowledged entry early in the stream holds everything after it."""
    group = consumer(redis, "a")
    await group.ensure()
    ids = await add(redis, 20)
    await group.read(count=20, block_ms=10)
    await group.ack([entry_id for n, entry_id in enumerate(ids) if n != 3])
    assert await group.trim(5) == 3
    assert await remaining(redis) == ids[3:]
    await group.ack([ids[3]])
    await group.trim(5)
    assert await remaining(redis) == ids[-5:]


async def test_trim_never_removes_an_undelivered_entry(redis: Redis) -> None:
    group = consumer(redis, "a")
    await group.ensure()
    ids = await add(redis, 20)
    await group.ack([entry_id for entry_id, _ in await group.read(count=8, block_ms=10)])
    await group.trim(5)
    assert set(ids[8:]) <= set(await remaining(redis))


async def test_trim_respects_every_group(redis: Redis) -> None:
    """A second group that lags behind (say, an analytics reader) keeps its entries too."""
    ours = consumer(redis, "a")
    await ours.ensure()
    await redis.xgroup_create(STREAM, "other", id="0")
    ids = await add(redis, 20)
    await ours.ack([entry_id for entry_id, _ in await ours.read(count=20, block_ms=10)])
    await redis.xreadgroup("other", "x", {STREAM: ">"}, count=10)
    await ours.trim(5)
    assert await remaining(redis) == ids  # "other" has 10 pending and 10 undelivered


async def test_stats_report_pending_and_lag_of_the_oldest_unacknowledged(redis: Redis) -> None:
    group = consumer(redis, "a")
    await group.ensure()
    empty = await group.stats()
    assert (empty.length, empty.pending, empty.lag_seconds) == (0, 0, 0.0)
    old = str(await redis.xadd(STREAM, {"user_id": "1"}, id="1000-0"))  # an entry from 1970: a huge lag
    await add(redis, 2)
    undelivered = await group.stats()
    assert (undelivered.length, undelivered.pending) == (3, 0)
    assert undelivered.lag_seconds > 1e9
    await group.read(count=1, block_ms=10)
    pending = await group.stats()
    assert (pending.length, pending.pending) == (3, 1)
    assert pending.lag_seconds > 1e9
    await group.ack([old])
    rest = [entry_id for entry_id, _ in await group.read(count=10, block_ms=10)]
    await group.ack(rest)
    done = await group.stats()
    assert (done.length, done.pending, done.lag_seconds) == (3, 0, 0.0)


async def test_stats_of_a_missing_stream_are_zero(redis: Redis) -> None:
    stats = await consumer(redis, "a").stats()
    assert (stats.length, stats.pending, stats.lag_seconds) == (0, 0, 0.0)


async def test_stale_consumers_without_pending_entries_are_removed(redis: Redis) -> None:
    me, idle, holding = consumer(redis, "me"), consumer(redis, "idle"), consumer(redis, "holding")
    await me.ensure()
    await add(redis, 1)
    await holding.read(count=1, block_ms=10)
    await redis.xgroup_createconsumer(STREAM, GROUP, idle.consumer)
    await redis.xgroup_createconsumer(STREAM, GROUP, me.consumer)
    await asyncio.sleep(0.05)
    assert await me.remove_stale_consumers(min_idle_ms=60_000) == []
    assert await me.remove_stale_consumers(min_idle_ms=10) == ["idle"]
    names = {c["name"] for c in await redis.xinfo_consumers(STREAM, GROUP)}
    assert names == {"me", "holding"}


@pytest.mark.parametrize("maxlen", [1, 10])
async def test_trim_of_a_short_stream_does_nothing(redis: Redis, maxlen: int) -> None:
    group = consumer(redis, "a")
    await group.ensure()
    await add(redis, 1)
    assert await group.trim(maxlen) == 0
    assert len(await remaining(redis)) == 1
