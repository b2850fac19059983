"""Chaos: two instances, a real Redis (AOF) of the test's own, users with a tab on each instance
that reconnect with ``since=``, a steady stream of signed webhooks; one fault per test.

After each fault heals: every feed item committed in PostgreSQL reached every tab of its user
(live or by resume), no duplicate feed item or transaction rows, XPENDING back to 0, poison in
the dead-letter stream, and the pipeline flows again. Each test prints its counts.
Short form by default (30 users, ~20 webhooks/s); ``CHAINFEED_CHAOS_LONG=1`` runs 200 users.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from chainfeed.config import Settings
from chainfeed.devtools.embedded import EmbeddedRedis
from tests.chaos_harness import ChaosClient, Feeder, User, account, check, recovered, start_clients
from tests.conftest import AppFactory, RunningApp
from tests.delivery_support import served_in_subprocess
from tests.ingest_support import TcpProxy

LONG = os.environ.get("CHAINFEED_CHAOS_LONG") == "1"
USERS = 200 if LONG else 30
RATE = 100.0 if LONG else 20.0
STEADY = 10.0 if LONG else 2.0  # seconds of traffic before and after the fault
FAST = {"claim_idle_ms": 500, "stream_block_ms": 200, "ws_max_per_user": 10}

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def direct(own_redis: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def _users(app: RunningApp) -> list[User]:
    users: list[User] = []
    for start in range(0, USERS, 10):  # scrypt per registration: a few at a time, not 200 at once
        users += await asyncio.gather(*(account(app.http) for _ in range(start, min(USERS, start + 10))))
    return users


async def _all_connected(clients: list[ChaosClient], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while any(c.ws is None for c in clients):
        assert time.monotonic() < deadline, "clients did not (re)connect"
        await asyncio.sleep(0.05)


async def _two_apps(
    app_factory: AppFactory, redis_url: str, **overrides: Any
) -> tuple[RunningApp, RunningApp]:
    settings = {**FAST, "redis_url": redis_url, **overrides}
    return await app_factory(**settings), await app_factory(**settings)


async def _stop_all(clients: list[ChaosClient], feeder: Feeder) -> None:
    await feeder.stop()
    await asyncio.gather(*(c.stop() for c in clients))


def _assert_clean(report: Any, *, dead_letters: int = 0) -> None:
    assert report.lost == 0, report.line()
    assert report.duplicate_rows == 0, report.line()
    assert report.pending == 0, report.line()
    assert report.dead_letters == dead_letters, report.line()
    assert report.committed >= 1, report.line()


async def test_redis_restart_loses_nothing_for_live_tabs(
    own_redis: EmbeddedRedis, app_factory: AppFactory, direct: Redis, db: asyncpg.Connection
) -> None:
    """Redis stops and starts again (AOF): tabs that stayed connected still get every item,
    including those pushed while their instance's PUB/SUB connection was re-established."""
    a, b = await _two_apps(app_factory, own_redis.url)
    users = await _users(a)
    clients = start_clients(users, [lambda: a.ws_url, lambda: b.ws_url])
    await _all_connected(clients)
    feeder = Feeder(users, [a.base_url, b.base_url], rate=RATE)
    feeder.start()
    await asyncio.sleep(STEADY)
    await asyncio.to_thread(own_redis.stop)
    await asyncio.sleep(1.5)
    await asyncio.to_thread(own_redis.start)
    healed = await recovered(db, clients)
    await asyncio.sleep(STEADY)
    await feeder.stop()
    report = await check(
        "redis-restart", db=db, redis=direct, clients=clients, feeder=feeder, recovery=healed
    )
    await _stop_all(clients, feeder)
    _assert_clean(report)


async def test_postgres_outage_loses_nothing(
    own_redis: EmbeddedRedis,
    app_factory: AppFactory,
    direct: Redis,
    db: asyncpg.Connection,
    settings: Settings,
) -> None:
    """PostgreSQL goes away (every connection reset, new ones refused) and comes back: webhooks
    get 503 meanwhile and are retried; every committed item reaches every tab."""
    database_url, _ = settings.require_services()
    pg = asyncpg_target(database_url)
    proxy = TcpProxy(*pg)
    await proxy.start()
    proxied = database_url.replace(f"{pg[0]}:{pg[1]}", f"127.0.0.1:{proxy.port}")
    a, b = await _two_apps(app_factory, own_redis.url, database_url=proxied)
    users = await _users(a)
    clients = start_clients(users, [lambda: a.ws_url, lambda: b.ws_url])
    await _all_connected(clients)
    feeder = Feeder(users, [a.base_url, b.base_url], rate=RATE)
    feeder.start()
    await asyncio.sleep(STEADY)
    await proxy.cut()
    await asyncio.sleep(1.5)
    await proxy.start()
    healed = await recovered(db, clients)
    await asyncio.sleep(STEADY)
    await feeder.stop()
    report = await check(
        "postgres-outage", db=db, redis=direct, clients=clients, feeder=feeder, recovery=healed
    )
    await _stop_all(clients, feeder)
    await proxy.cut()
    _assert_clean(report)
    assert feeder.retried > 0  # the outage was seen (503s or resets), and retried


def asyncpg_target(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url.replace("postgresql://", "http://", 1))
    return parsed.host, parsed.port or 5432


async def test_every_websocket_dropped_at_once_resumes_without_loss(
    own_redis: EmbeddedRedis, app_factory: AppFactory, direct: Redis, db: asyncpg.Connection
) -> None:
    """Every tab's TCP connection is cut at the same moment; all reconnect with since= and
    catch up."""
    a, b = await _two_apps(app_factory, own_redis.url)
    users = await _users(a)
    clients = start_clients(users, [lambda: a.ws_url, lambda: b.ws_url])
    await _all_connected(clients)
    feeder = Feeder(users, [a.base_url, b.base_url], rate=RATE)
    feeder.start()
    await asyncio.sleep(STEADY)
    for c in clients:
        c.drop()
    healed = await recovered(db, clients)
    await asyncio.sleep(STEADY)
    await feeder.stop()
    report = await check(
        "drop-all-websockets", db=db, redis=direct, clients=clients, feeder=feeder, recovery=healed
    )
    await _stop_all(clients, feeder)
    _assert_clean(report)
    assert all(c.connects >= 2 for c in clients)


async def test_poison_entries_go_to_the_dead_letter_stream_and_good_ones_flow(
    own_redis: EmbeddedRedis, app_factory: AppFactory, direct: Redis, db: asyncpg.Connection
) -> None:
    """Poison entries (bad JSON, bad user id, unknown user) among good traffic: each ends in the
    dead-letter stream after its retries, and nothing else is held up."""
    a, b = await _two_apps(app_factory, own_redis.url)
    users = await _users(a)
    clients = start_clients(users, [lambda: a.ws_url, lambda: b.ws_url])
    await _all_connected(clients)
    feeder = Feeder(users, [a.base_url, b.base_url], rate=RATE)
    feeder.start()
    poison = [
        {"user_id": str(users[0].id), "type": "test", "payload": "{not json"},
        {"user_id": "minus-one", "type": "test", "payload": "{}"},
        {"user_id": "999999999", "type": "test", "payload": "{}"},
    ]
    for fields in poison * 2:
        await direct.xadd("feed:stream", fields)  # type: ignore[arg-type]
        await asyncio.sleep(STEADY / 6)
    healed = await recovered(db, clients)
    await asyncio.sleep(STEADY)
    await feeder.stop()
    report = await check("poison", db=db, redis=direct, clients=clients, feeder=feeder, recovery=healed)
    await _stop_all(clients, feeder)
    _assert_clean(report, dead_letters=len(poison) * 2)


async def test_duplicate_webhook_deliveries_create_nothing_twice(
    own_redis: EmbeddedRedis, app_factory: AppFactory, direct: Redis, db: asyncpg.Connection
) -> None:
    """Every delivery is posted twice at once, to both instances: one row and one item each."""
    a, b = await _two_apps(app_factory, own_redis.url)
    users = await _users(a)
    clients = start_clients(users, [lambda: a.ws_url, lambda: b.ws_url])
    await _all_connected(clients)
    feeder = Feeder(users, [a.base_url, b.base_url], rate=RATE, duplicate=True)
    feeder.start()
    await asyncio.sleep(2 * STEADY)
    healed = await recovered(db, clients)
    await feeder.stop()
    report = await check(
        "duplicate-webhooks", db=db, redis=direct, clients=clients, feeder=feeder, recovery=healed
    )
    await _stop_all(clients, feeder)
    _assert_clean(report)
    assert report.committed * 2 == report.published


async def _pending_of(redis: Redis, consumer: str, within: float = 10.0) -> int:
    """Entries pending on ``consumer`` once it holds some (0 if none within ``within`` s)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        summary: Any = await redis.xpending("feed:stream", "feed:consumers")
        held = {c["name"]: int(c["pending"]) for c in summary.get("consumers") or []}
        if held.get(consumer, 0) > 0:
            return held[consumer]
        await asyncio.sleep(0.05)
    return 0


async def test_sigkill_of_an_instance_mid_stream_then_restart(
    own_redis: EmbeddedRedis,
    app_factory: AppFactory,
    direct: Redis,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    """One instance (a real process) is SIGKILLed while it holds tabs and pending entries; its
    tabs fail over to the other instance, its pending entries are claimed, and a restarted
    process serves again."""
    a = await app_factory(**FAST, redis_url=own_redis.url)
    env = {
        "CHAINFEED_CLAIM_IDLE_MS": "500",
        "CHAINFEED_STREAM_BLOCK_MS": "200",
        "CHAINFEED_WS_MAX_PER_USER": "10",
        "CHAINFEED_CONSUMER_NAME": "chaos-b",
    }
    child_settings = replace(a.settings, redis_url=own_redis.url)
    users = await _users(a)
    target = {"b": ""}
    async with served_in_subprocess(child_settings, tmp_path / "b.log", **env) as (process, base_url):
        target["b"] = base_url.replace("http://", "ws://") + "/ws"
        clients = start_clients(users, [lambda: a.ws_url, lambda: target["b"]])
        await _all_connected(clients)
        feeder = Feeder(users, [a.base_url, base_url], rate=RATE)
        feeder.start()
        await asyncio.sleep(STEADY)
        # Freeze it first: its blocked XREADGROUP still takes entries it will never acknowledge.
        feeder.urls = [a.base_url]
        held = 0
        for _attempt in range(20):  # it must be frozen inside a blocked read: retry until it is
            process.send_signal(signal.SIGSTOP)
            held = await _pending_of(direct, "chaos-b", within=1.5)
            if held:
                break
            process.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.1 + random.random() * 0.3)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        target["b"] = a.ws_url  # the killed instance's tabs fail over
    print(f"chaos sigkill-instance: entries pending on the killed instance: {held}")
    assert held > 0
    env["CHAINFEED_CONSUMER_NAME"] = "chaos-b2"
    async with served_in_subprocess(child_settings, tmp_path / "b2.log", **env) as (_process, base_url):
        healed = await recovered(db, clients)
        feeder.urls = [a.base_url, base_url]
        await asyncio.sleep(STEADY)
        await feeder.stop()
        report = await check(
            "sigkill-instance", db=db, redis=direct, clients=clients, feeder=feeder, recovery=healed
        )
    await _stop_all(clients, feeder)
    _assert_clean(report)
