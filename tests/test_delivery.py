"""Reliable consumption: poison entries dead-letter, a killed instance's entries are claimed, the
stream is trimmed without losing unacknowledged entries, hand entries are persisted once."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from chainfeed.config import Settings
from chainfeed.delivery import maintenance
from chainfeed.storage.entries import persist_entry
from chainfeed.storage.pool import create_pool
from tests.conftest import AppFactory, RunningApp
from tests.delivery_support import (
    client,
    eventually,
    ready,
    recv_frames,
    served_in_subprocess,
    xadd_hand,
    xadd_item,
)

STREAM, GROUP, DEAD = "feed:stream", "feed:consumers", "feed:stream:dead"


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def gauge(name: str, labels: dict[str, str] | None = None) -> float | None:
    return REGISTRY.get_sample_value(name, labels or {})


async def pending(redis: Redis) -> int:
    return int((await redis.xpending(STREAM, GROUP))["pending"])


async def test_poison_entries_are_dead_lettered_while_later_entries_flow(
    app_factory: AppFactory, redis: Redis
) -> None:
    """Retried until the configured deliveries are spent, then moved with the reason; never blocking."""
    app = await app_factory(claim_idle_ms=200, max_deliveries=3)
    body = await app.register()
    user_id = body["user"]["id"]
    retries, dead = counter("redis_stream_retry_count_total"), counter("redis_stream_dead_letters_total")
    async with client(app, body["access_token"]) as ws:
        await ready(ws)
        bad_json = await xadd_hand(redis, user_id, payload="{not json")
        bad_user = await redis.xadd(STREAM, {"user_id": "abc", "type": "test", "payload": "{}"})
        for n in range(1, 4):
            await xadd_item(redis, user_id, n, {"n": n})
        assert [f["id"] for f in await recv_frames(ws, 3, within=1)] == [1, 2, 3]  # not held up
        await eventually(lambda: _dead_letters(redis, 2), within=5)
        await xadd_item(redis, user_id, 4, {"n": 4})
        assert [f["id"] for f in await recv_frames(ws, 1)] == [4]
    letters = {fields["original_id"]: fields for _, fields in await redis.xrange(DEAD)}
    assert set(letters) == {bad_json, bad_user}
    assert letters[bad_json]["payload"] == "{not json"
    assert letters[bad_json]["deliveries"] == "3"
    assert letters[bad_json]["error"].startswith("payload is not valid JSON")
    assert letters[bad_user]["user_id"] == "abc"
    assert letters[bad_user]["error"] == "user_id is not a positive integer"
    assert await pending(redis) == 0
    assert counter("redis_stream_dead_letters_total") == dead + 2
    assert counter("redis_stream_retry_count_total") == retries + 4  # two claims of each


async def test_entry_for_an_unknown_user_is_dead_lettered(app_factory: AppFactory, redis: Redis) -> None:
    await app_factory(claim_idle_ms=100, max_deliveries=2)
    entry_id = await xadd_hand(redis, 424242)
    await eventually(lambda: _dead_letters(redis, 1))
    [(_, fields)] = await redis.xrange(DEAD)
    assert (fields["original_id"], fields["error"]) == (entry_id, "user 424242 does not exist")


async def test_hand_entry_is_persisted_once_however_often_it_is_delivered(
    settings: Settings, app: RunningApp, db: asyncpg.Connection
) -> None:
    user_id = (await app.register())["user"]["id"]
    assert settings.database_url is not None
    pool = await create_pool(settings.database_url)
    try:
        first = await persist_entry(
            pool, entry_id="1-0", user_id=user_id, type_="test", payload_json='{"a": 1}'
        )
        again = await persist_entry(
            pool, entry_id="1-0", user_id=user_id, type_="test", payload_json='{"a": 1}'
        )
        nobody = await persist_entry(pool, entry_id="2-0", user_id=999, type_="test", payload_json="{}")
    finally:
        await pool.close()
    assert first is not None
    assert first == again
    assert nobody is None
    assert await db.fetchval("SELECT count(*) FROM feed_items") == 1


async def test_entries_of_a_killed_instance_are_claimed_and_delivered(
    settings: Settings, app_factory: AppFactory, redis: Redis, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Instance S reads three entries and is SIGKILLed mid-way; instance A claims and delivers them.

    S is held mid-delivery by a row lock the test takes on the user (S's insert of the first hand
    entry waits on it), so the entries are provably pending on S when it dies.
    """
    async with served_in_subprocess(settings, tmp_path / "victim.log", CHAINFEED_CONSUMER_NAME="victim") as (
        victim,
        base_url,
    ):
        async with httpx.AsyncClient(base_url=base_url) as http:
            response = await http.post(
                "/api/auth/register", json={"username": "kim", "password": "correct-horse"}
            )
        body = response.json()
        user_id = body["user"]["id"]
        lock = db.transaction()
        await lock.start()
        await db.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
        pipe = redis.pipeline(transaction=True)  # one MULTI: the blocked reader gets all three at once
        for n in range(3):
            pipe.xadd(STREAM, {"user_id": str(user_id), "type": "test", "payload": json.dumps({"n": n})})
        entry_ids = [str(entry_id) for entry_id in await pipe.execute()]
        await eventually(lambda: _pending_on(redis, "victim", 3), within=10)
        victim.send_signal(signal.SIGKILL)
        assert await victim.wait() == -signal.SIGKILL
    retries = counter("redis_stream_retry_count_total")
    rescuer = await app_factory(consumer_name="rescuer", claim_idle_ms=300)
    async with client(rescuer, body["access_token"]) as ws:
        await ready(ws)
        await lock.rollback()
        frames = await recv_frames(ws, 3, within=10)
    assert [f["payload"] for f in frames] == [{"n": 0}, {"n": 1}, {"n": 2}]
    rows = await db.fetch("SELECT id, source_entry_id FROM feed_items ORDER BY id")
    assert sorted(row["source_entry_id"] for row in rows) == sorted(entry_ids)  # each once
    assert {f["id"] for f in frames} == {row["id"] for row in rows}
    assert await pending(redis) == 0
    assert counter("redis_stream_retry_count_total") >= retries + 3


async def test_maintenance_trims_history_keeps_unacknowledged_and_reports_gauges(
    app_factory: AppFactory, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With maxlen 5: acknowledged history goes, an entry held by a stuck consumer stays, gauges tell."""
    monkeypatch.setattr(maintenance, "MAINTENANCE_SECONDS", 0.05)
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    stuck = await redis.xadd(STREAM, {"user_id": "1", "payload": "{}", "feed_item_id": "1"})
    await redis.xreadgroup(GROUP, "stuck", {STREAM: ">"}, count=1)  # pending until claimed
    app = await app_factory(stream_maxlen=5)  # claim_idle_ms stays 30 s: nobody claims it here
    body = await app.register()
    async with client(app, body["access_token"]) as ws:
        await ready(ws)
        for n in range(2, 22):
            await xadd_item(redis, body["user"]["id"], n, {"n": n})
        await recv_frames(ws, 20)
    await eventually(lambda: _gauge_is("redis_stream_length", {"stream": STREAM}, 21.0))
    ids = [entry_id for entry_id, _ in await redis.xrange(STREAM)]
    assert ids[0] == stuck  # the unacknowledged entry and everything after it are kept
    assert len(ids) == 21
    # The gauges are a snapshot every 0.05 s: the last batch's XACK may land just after one.
    await eventually(lambda: _gauge_is("redis_stream_pending", {"group": GROUP}, 1.0))
    assert (gauge("redis_stream_consumer_lag_seconds") or 0) > 0
    await redis.xack(STREAM, GROUP, stuck)
    await eventually(lambda: _stream_length(redis, 5))
    await eventually(lambda: _gauge_is("redis_stream_consumer_lag_seconds", None, 0.0))
    await eventually(lambda: _gauge_is("redis_stream_length", {"stream": STREAM}, 5.0))


def _gauge_is(name: str, labels: dict[str, str] | None, value: float) -> bool:
    return gauge(name, labels) == value


async def _dead_letters(redis: Redis, count: int) -> bool:
    return int(await redis.xlen(DEAD)) >= count


async def _stream_length(redis: Redis, length: int) -> bool:
    return int(await redis.xlen(STREAM)) == length


async def _pending_on(redis: Redis, consumer: str, count: int) -> bool:
    summary = await redis.xpending(STREAM, GROUP)
    return any(c["name"] == consumer and c["pending"] == count for c in summary["consumers"])
