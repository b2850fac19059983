"""The outbox relay: committed feed items reach the stream once, in order, whatever crashed when."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from chainfeed.broker.client import redis_client
from chainfeed.broker.wire import encode_commands
from chainfeed.config import Settings
from chainfeed.devtools.embedded import free_port
from chainfeed.domain.alchemy import parse_webhook
from chainfeed.ingest.relay import OutboxRelay
from chainfeed.storage import create_pool
from chainfeed.storage.ingest import store_webhook
from tests.conftest import AppFactory, app_runtime
from tests.ingest_support import activity, address, eventually, post_webhook, stream_entries, watch, webhook

ME, ALICE = address(0xA11CE0), address(0xA11CE1)


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    assert settings.database_url is not None
    created = await create_pool(settings.database_url)
    try:
        yield created
    finally:
        await created.close()


async def _watchers(db: asyncpg.Connection, count: int, watched: str) -> list[int]:
    ids = []
    for n in range(count):
        user_id = await db.fetchval(
            "INSERT INTO users (username, password_hash) VALUES ($1, 'x') RETURNING id", f"watcher{n}"
        )
        await db.execute("INSERT INTO watched_addresses (user_id, address) VALUES ($1, $2)", user_id, watched)
        ids.append(int(user_id))
    return ids


async def _commit_without_publishing(pool: asyncpg.Pool, transfers: int) -> int:
    """What ingest commits, with no relay running: the state a crash right after COMMIT leaves."""
    body = webhook(*(activity("token", frm=ALICE, to=ME, log_index=i) for i in range(transfers)))
    stored = await store_webhook(pool, parse_webhook(json.dumps(body).encode()))
    return stored.new_feed_items


async def _unpublished(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM feed_outbox"))


async def test_item_committed_before_a_crash_is_published_after_restart(
    app_factory: AppFactory, db: asyncpg.Connection, redis: Redis
) -> None:
    """The process dies between COMMIT and XADD (its relay never runs); the next process publishes it."""
    first = await app_factory()
    session = await first.register()
    await watch(first, session["access_token"], ME)
    relay_task = next(t for t in app_runtime(first).workers if t.get_name() == "outbox-relay")
    relay_task.cancel()
    response = await post_webhook(first, webhook(activity("external", frm=ALICE, to=ME)))
    assert response.json() == {"activities": 1, "new_feed_items": 1}
    first.server.should_exit = True
    assert await stream_entries(redis) == []
    assert await _unpublished(db) == 1

    await app_factory()  # the restarted process

    async def published() -> bool:
        return len(await stream_entries(redis)) == 1 and await _unpublished(db) == 0

    await eventually(published, what="the orphaned item on the stream")
    (entry,) = await stream_entries(redis)
    assert int(entry["feed_item_id"]) == await db.fetchval("SELECT id FROM feed_items")
    assert entry["user_id"] == str(session["user"]["id"])


async def test_several_relays_publish_each_item_once_numbered_in_its_users_feed(
    settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    """Three instances' relays drain one backlog at once: every item once, each user's numbered 1..n."""
    await _watchers(db, 3, ME)
    assert await _commit_without_publishing(pool, 200) == 600
    client = redis_client(settings.redis_url or "")
    try:
        relays = [
            OutboxRelay(pool=pool, redis=client, stream=settings.stream, batch_size=50) for _ in range(3)
        ]
        counts = await asyncio.gather(*(_drain(relay) for relay in relays))
    finally:
        await client.aclose()
    assert sum(counts) == 600
    entries = await stream_entries(redis)
    ids = [int(e["feed_item_id"]) for e in entries]
    assert len(ids) == len(set(ids)) == 600
    assert await _unpublished(db) == 0
    # Each user's items are numbered 1..n in id order (one relay numbers at a time, in outbox
    # order), and every entry carries the number its row has.
    rows = await db.fetch("SELECT id, user_id, seq FROM feed_items ORDER BY user_id, id")
    by_user: dict[int, list[int]] = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append(row["seq"])
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_user.values())
    assert {int(e["feed_item_id"]): int(e["seq"]) for e in entries} == {r["id"]: r["seq"] for r in rows}
    counters = {r["id"]: r["feed_seq"] for r in await db.fetch("SELECT id, feed_seq FROM users")}
    assert all(counters[user] == len(seqs) for user, seqs in by_user.items())


async def test_failed_publish_leaves_items_for_the_next_pass(
    settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    """XADD fails (Redis unreachable): the batch is rolled back, then published by a healthy pass."""
    await _watchers(db, 1, ME)
    await _commit_without_publishing(pool, 3)
    dead = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        with pytest.raises(RedisConnectionError):
            await _drain(OutboxRelay(pool=pool, redis=dead, stream=settings.stream))
    finally:
        await dead.aclose()
    assert await _unpublished(db) == 3
    assert await stream_entries(redis) == []
    client = redis_client(settings.redis_url or "")
    try:
        assert await _drain(OutboxRelay(pool=pool, redis=client, stream=settings.stream)) == 3
    finally:
        await client.aclose()
    assert len(await stream_entries(redis)) == 3


async def test_relay_wakes_promptly_after_a_commit(
    app_factory: AppFactory, redis: Redis, db: asyncpg.Connection
) -> None:
    """The webhook wakes the relay: the entry appears well before the 1 s sweep would find it."""
    app = await app_factory()
    session = await app.register()
    await watch(app, session["access_token"], ME)
    await post_webhook(app, webhook(activity("external", frm=ALICE, to=ME)))  # warm up
    await eventually(lambda: _length(redis, 1))
    await asyncio.sleep(0)
    started = time.monotonic()
    response = await post_webhook(app, webhook(activity("external", frm=ALICE, to=ME)))
    assert response.json()["new_feed_items"] == 1
    await eventually(lambda: _length(redis, 2), within=0.5, what="the entry within 0.5 s")
    assert time.monotonic() - started < 0.5


async def _length(redis: Redis, count: int) -> bool:
    return int(await redis.xlen("feed:stream")) >= count


async def test_stream_entry_continues_the_ingest_trace(
    app_factory: AppFactory, redis: Redis, db: asyncpg.Connection
) -> None:
    """The entry's traceparent is a child span in the trace the ingest started (same trace id),
    even when another process publishes it after a crash."""
    first = await app_factory()
    session = await first.register()
    await watch(first, session["access_token"], ME)
    next(t for t in app_runtime(first).workers if t.get_name() == "outbox-relay").cancel()
    await post_webhook(first, webhook(activity("external", frm=ALICE, to=ME)))
    stored = await db.fetchval("SELECT traceparent FROM feed_outbox")
    first.server.should_exit = True
    await app_factory()
    await eventually(lambda: _length(redis, 1))
    (entry,) = await stream_entries(redis)
    version, trace_id, span_id, _flags = entry["traceparent"].split("-")
    assert (version, trace_id) == ("00", stored.split("-")[1])
    assert span_id != stored.split("-")[2]
    assert set(entry) >= {"user_id", "type", "payload", "feed_item_id", "created_at", "traceparent"}


async def test_item_deleted_before_publication_is_dropped_quietly(
    settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    """A user deleted (with their items) before the relay ran: the rest is published, the outbox empties."""
    gone, kept = await _watchers(db, 2, ME)
    assert await _commit_without_publishing(pool, 2) == 4
    await db.execute("DELETE FROM users WHERE id = $1", gone)
    client = redis_client(settings.redis_url or "")
    try:
        assert await _drain(OutboxRelay(pool=pool, redis=client, stream=settings.stream)) == 4
    finally:
        await client.aclose()
    assert {e["user_id"] for e in await stream_entries(redis)} == {str(kept)}
    assert len(await stream_entries(redis)) == 2
    assert await _unpublished(db) == 0


async def test_items_that_came_from_the_stream_are_never_sent_back(
    settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    """The delivery side records hand XADDs as feed items; the relay does not publish them again."""
    (user_id,) = await _watchers(db, 1, ME)
    await db.execute(
        "INSERT INTO feed_items (user_id, type, payload, source_entry_id) VALUES ($1, 'test', '{}', '1-1')",
        user_id,
    )
    client = redis_client(settings.redis_url or "")
    try:
        assert await _drain(OutboxRelay(pool=pool, redis=client, stream=settings.stream)) == 0
    finally:
        await client.aclose()
    assert await stream_entries(redis) == []


def test_xadd_is_encoded_in_the_redis_protocol() -> None:
    """Lengths are in bytes, so non-ASCII payloads travel intact."""
    packed = encode_commands([["XADD", "feed:stream", "*", "user_id", "1", "payload", '{"asset":"€"}']])
    assert packed == (
        b"*7\r\n$4\r\nXADD\r\n$11\r\nfeed:stream\r\n$1\r\n*\r\n$7\r\nuser_id\r\n$1\r\n1\r\n"
        b'$7\r\npayload\r\n$15\r\n{"asset":"\xe2\x82\xac"}\r\n'
    )


async def test_a_refused_xadd_fails_the_batch_and_the_connection_is_not_reused(
    settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    """Redis answers an error (the key is not a stream): nothing is marked; once fixed, all goes out."""
    await _watchers(db, 1, ME)
    await _commit_without_publishing(pool, 3)
    await redis.set("feed:stream", "not a stream")
    client = redis_client(settings.redis_url or "")
    relay = OutboxRelay(pool=pool, redis=client, stream=settings.stream)
    try:
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await relay.drain()
        assert await _unpublished(db) == 3
        await redis.delete("feed:stream")
        assert await client.ping()  # the pool hands out a clean connection, no stray replies
        assert await relay.drain() == 3
    finally:
        await relay.close()
        await client.aclose()
    entries = await stream_entries(redis)
    assert [json.loads(e["payload"])["asset"] for e in entries] == ["ETH"] * 3


async def _drain(relay: OutboxRelay) -> int:
    """Drain with a relay made for one call, closing its Redis connection after."""
    try:
        return await relay.drain()
    finally:
        await relay.close()


async def test_after_a_restore_no_id_or_number_a_client_saw_is_handed_out_again(
    settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    """Items 1-3 are published; PostgreSQL is then restored from a backup taken after item 1.
    At start-up the relay sees the id sequence behind what Redis says was published and moves
    the sequence and the feed counters on: the next item gets a new id and a higher number."""
    (user_id,) = await _watchers(db, 1, ME)
    assert await _commit_without_publishing(pool, 3) == 3
    client = redis_client(settings.redis_url or "")
    relay = OutboxRelay(pool=pool, redis=client, stream=settings.stream)
    try:
        assert await relay.drain() == 3
        served = [(r["id"], r["seq"]) for r in await db.fetch("SELECT id, seq FROM feed_items ORDER BY seq")]
        assert [seq for _, seq in served] == [1, 2, 3]
        # The restore: the backup holds item 1 only; sequence and counter as they were then.
        await db.execute("DELETE FROM feed_items WHERE id <> $1", served[0][0])
        await db.execute("SELECT setval('feed_items_id_seq', $1)", served[0][0])
        await db.execute("UPDATE users SET feed_seq = 1 WHERE id = $1", user_id)
        assert await relay.move_past_restore() == served[2][0] - served[0][0]
        assert await relay.move_past_restore() == 0  # once: the sequence is past it now
        await _commit_without_publishing(pool, 1)
        assert await relay.drain() == 1
    finally:
        await relay.close()
        await client.aclose()
    new_id, new_seq = (await db.fetch("SELECT id, seq FROM feed_items ORDER BY seq DESC LIMIT 1"))[0]
    assert new_id > served[2][0]
    assert new_seq > 3
