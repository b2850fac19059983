"""The webhook while PostgreSQL or Redis is down: 503 (Alchemy retries), nothing half-written,
and once the server is back every committed feed item is on the stream exactly once."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from redis.asyncio import Redis

from chainfeed.config import Settings
from chainfeed.devtools.embedded import EmbeddedRedis
from chainfeed.domain.alchemy import parse_webhook
from chainfeed.storage.ingest import store_webhook
from tests.conftest import AppFactory, RunningApp, app_runtime
from tests.ingest_support import (
    Metrics,
    TcpProxy,
    activity,
    address,
    eventually,
    metric,
    post_webhook,
    stream_entries,
    watch,
    webhook,
)

ME, ALICE = address(0xA11CE0), address(0xA11CE1)


async def _rows_for(db: asyncpg.Connection, body: dict[str, object]) -> int:
    hashes = [a["hash"] for a in body["event"]["activity"]]  # type: ignore[index]
    in_transactions = await db.fetchval("SELECT count(*) FROM transactions WHERE hash = ANY($1)", hashes)
    events = await db.fetchval("SELECT count(*) FROM webhook_events WHERE id = $1", body["id"])
    return int(in_transactions) + int(events)


async def test_redis_down_is_503_and_every_committed_item_is_published_once_it_is_back(
    app_factory: AppFactory, own_redis: EmbeddedRedis, db: asyncpg.Connection
) -> None:
    app = await app_factory(redis_url=own_redis.url)
    direct = Redis.from_url(own_redis.url, decode_responses=True)
    try:
        session = await app.register()
        await watch(app, session["access_token"], ME)
        before = webhook(activity("external", frm=ALICE, to=ME))
        assert (await post_webhook(app, before)).json() == {"activities": 1, "new_feed_items": 1}
        await eventually(lambda: _published(db, 1), what="the first item published")

        metrics = Metrics()
        await asyncio.to_thread(own_redis.stop)
        during = webhook(activity("token", frm=ALICE, to=ME, log_index=2))
        refused = await post_webhook(app, during)
        assert refused.status_code == 503
        assert refused.json() == {"error": "redis unavailable"}
        assert await _rows_for(db, during) == 0
        assert metrics.delta("webhook_requests_total", outcome="unavailable") == 1

        # The window no check can close: a commit that lands just as Redis goes away. Its item waits,
        # visible to the SRE as outbox backlog.
        runtime = app_runtime(app)
        assert runtime.relay is not None
        raced = webhook(activity("internal", frm=ALICE, to=ME, trace="call_1"))
        stored = await store_webhook(runtime.pool, parse_webhook(json.dumps(raced).encode()))
        assert stored.new_feed_items == 1
        runtime.relay.wake()
        await eventually(lambda: _true(metric("outbox_backlog") == 1), within=5, what="backlog gauge at 1")

        await asyncio.to_thread(own_redis.start)
        retried = await post_webhook(app, during)  # Alchemy's retry
        assert retried.json() == {"activities": 1, "new_feed_items": 1}
        await eventually(lambda: _published(db, 3), what="every item published")
        ids = [int(e["feed_item_id"]) for e in await stream_entries(direct)]
        expected = [row["id"] for row in await db.fetch("SELECT id FROM feed_items ORDER BY id")]
        assert sorted(ids) == expected  # each committed item exactly once
        assert len(ids) == 3
        await eventually(lambda: _true(metric("outbox_backlog") == 0), within=5, what="backlog back to 0")
    finally:
        await direct.aclose()


async def test_postgres_down_is_503_and_writes_nothing(
    app_factory: AppFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    """PostgreSQL unreachable (connections reset, new ones refused): 503; back again: accepted."""
    assert settings.database_url is not None
    parts = urlsplit(settings.database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await proxy.start()
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    via_proxy = urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{port}"))
    app = await app_factory(database_url=via_proxy)
    session = await app.register()
    await watch(app, session["access_token"], ME)
    metrics = Metrics()

    await proxy.cut()
    payload = webhook(activity("external", frm=ALICE, to=ME))
    refused = await post_webhook(app, payload)
    assert refused.status_code == 503
    assert refused.json() == {"error": "postgres unavailable"}
    assert await _rows_for(db, payload) == 0
    assert metrics.delta("webhook_requests_total", outcome="unavailable") == 1

    await proxy.start()
    accepted = await post_webhook(app, payload)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"activities": 1, "new_feed_items": 1}
    await proxy.cut()


async def _published(db: asyncpg.Connection, count: int) -> bool:
    """``count`` feed items exist and none is left in the outbox."""
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM feed_items) AS n, (SELECT count(*) FROM feed_outbox) AS waiting"
    )
    assert row is not None
    return bool(row["n"] == count and row["waiting"] == 0)


async def _true(value: bool) -> bool:
    return value


def _via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's (credentials and path kept)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{port}"))


async def _answer_within(app: RunningApp, payload: dict[str, object], limit: float) -> httpx.Response:
    started = time.monotonic()
    response = await post_webhook(app, payload)
    elapsed = time.monotonic() - started
    assert elapsed < limit, f"answered after {elapsed:.2f}s, Alchemy gives up at 5s"
    return response


async def test_a_postgresql_black_hole_is_503_with_retry_after_well_before_5s(
    app_factory: AppFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    """PostgreSQL stops answering without closing anything: the webhook gives up on the store
    after its budget (3 s) and answers 503 with Retry-After, so Alchemy retries; nothing is
    half-written, and once PostgreSQL answers again the retry is stored."""
    assert settings.database_url is not None
    parts = urlsplit(settings.database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    app = await app_factory(database_url=_via(settings.database_url, await proxy.start()))
    session = await app.register()
    await watch(app, session["access_token"], ME)
    payload = webhook(activity("external", frm=ALICE, to=ME))

    proxy.freeze()
    refused = await _answer_within(app, payload, 4.5)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "5"
    assert await _rows_for(db, payload) == 0
    proxy.thaw()
    await eventually(
        lambda: _accepted(app, payload), within=15, what="the retry is stored once PostgreSQL answers"
    )
    assert await _rows_for(db, payload) == 2  # its transfer and its event
    await proxy.cut()


async def test_a_redis_black_hole_is_503_with_retry_after_well_before_5s(
    app_factory: AppFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    assert settings.redis_url is not None
    parts = urlsplit(settings.redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    app = await app_factory(redis_url=_via(settings.redis_url, await proxy.start()))
    session = await app.register()
    await watch(app, session["access_token"], ME)
    payload = webhook(activity("external", frm=ALICE, to=ME))

    proxy.freeze()
    refused = await _answer_within(app, payload, 2.5)
    assert refused.status_code == 503, refused.text
    assert (refused.json(), refused.headers["Retry-After"]) == ({"error": "redis unavailable"}, "5")
    assert await _rows_for(db, payload) == 0
    proxy.thaw()
    await eventually(
        lambda: _accepted(app, payload), within=15, what="the retry is stored once Redis answers"
    )
    await proxy.cut()


async def _accepted(app: RunningApp, payload: dict[str, object]) -> bool:
    return (await post_webhook(app, payload)).status_code == 200
