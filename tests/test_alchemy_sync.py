"""Watch-list sync with Alchemy against a real local server that plays Alchemy's API."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chainfeed.domain.alchemy_sync import SYNC_BACKOFF, Outcome, classify, patches
from chainfeed.observability.metrics import ALCHEMY_SYNC_REQUESTS
from chainfeed.storage.alchemy_sync import record_watch_change
from tests.alchemy_fake import TOKEN, WEBHOOK_ID, FakeAlchemy, running_fake
from tests.conftest import AppFactory, RunningApp
from tests.delivery_support import eventually

A = "0x" + "a" * 40
B = "0x" + "b" * 40


@pytest.fixture
async def fake() -> AsyncIterator[FakeAlchemy]:
    async with running_fake() as server:
        yield server


async def _synced_app(app_factory: AppFactory, fake: FakeAlchemy, token: str = TOKEN) -> RunningApp:
    return await app_factory(
        alchemy_api_url=fake.url, alchemy_auth_token=token, alchemy_webhook_id=WEBHOOK_ID
    )


async def _watch(app: RunningApp, token: str, address: str) -> None:
    response = await app.http.post("/api/addresses", json={"address": address}, headers=app.auth(token))
    assert response.status_code in (200, 201)


async def _unwatch(app: RunningApp, token: str, address: str) -> None:
    response = await app.http.delete(f"/api/addresses/{address}", headers=app.auth(token))
    assert response.status_code == 204


# --- pure rules ---------------------------------------------------------------------------


def test_patches_respect_the_500_limit() -> None:
    adds = [f"0x{i:040x}" for i in range(1200)]
    calls = list(patches(adds, adds[:10]))
    assert [len(c.add) for c in calls] == [500, 500, 200]
    assert [len(c.remove) for c in calls] == [10, 0, 0]
    assert [a for c in calls for a in c.add] == adds


def test_classify_and_backoff() -> None:
    assert classify(200) is Outcome.OK
    assert classify(None) is classify(429) is classify(503) is Outcome.RETRY
    assert classify(401) is classify(403) is Outcome.UNAUTHORIZED
    assert classify(400) is Outcome.REJECTED
    delays = [dataclasses.replace(SYNC_BACKOFF, jitter=0).delay(n) for n in range(1, 12)]
    assert delays[:4] == [1, 2, 4, 8]
    assert max(delays) == 300


# --- against the fake ---------------------------------------------------------------------


async def test_first_watcher_adds_and_last_unwatch_removes_shared_address_once(
    app_factory: AppFactory, fake: FakeAlchemy
) -> None:
    app = await _synced_app(app_factory, fake)
    alice, bob = (await app.register())["access_token"], (await app.register())["access_token"]
    await _watch(app, alice, A)
    await fake.wait_for(lambda: fake.addresses == {A})
    await _watch(app, bob, A)  # already covered: nothing new is sent
    await _watch(app, bob, B)
    await fake.wait_for(lambda: fake.addresses == {A, B})
    await _unwatch(app, alice, A)  # bob still watches A: nothing is removed
    await asyncio.sleep(1.5)
    assert fake.addresses == {A, B}
    await _unwatch(app, bob, A)
    await fake.wait_for(lambda: fake.addresses == {B})
    assert fake.added().count(A) == 1
    assert fake.removed() == [A]


async def test_batches_respect_500(
    app_factory: AppFactory, fake: FakeAlchemy, db: asyncpg.Connection
) -> None:
    user_id = await db.fetchval(
        "INSERT INTO users (username, password_hash) VALUES ('bulk', 'x') RETURNING id"
    )
    addresses = [f"0x{i:040x}" for i in range(1, 1201)]
    async with db.transaction():
        await db.executemany(
            "INSERT INTO watched_addresses (user_id, address) VALUES ($1, $2)",
            [(user_id, a) for a in addresses],
        )
        for address in addresses:
            await record_watch_change(db, address)
    await _synced_app(app_factory, fake)
    await fake.wait_for(lambda: fake.addresses == set(addresses), within=20)
    assert all(len(body["addresses_to_add"]) <= 500 for _, body in fake.calls)
    assert len(fake.added()) == 1200


async def test_failures_retry_then_succeed(app_factory: AppFactory, fake: FakeAlchemy) -> None:
    fake.script = [503, 429]
    retries_before = ALCHEMY_SYNC_REQUESTS.labels(outcome="retry")._value.get()
    app = await _synced_app(app_factory, fake)
    await _watch(app, (await app.register())["access_token"], A)
    await fake.wait_for(lambda: fake.addresses == {A}, within=15)
    assert len(fake.calls) == 3
    assert ALCHEMY_SYNC_REQUESTS.labels(outcome="retry")._value.get() - retries_before == 2
    metrics = (await app.http.get("/metrics")).text
    assert 'alchemy_sync_requests_total{outcome="ok"}' in metrics


async def test_nothing_lost_across_a_restart(
    app_factory: AppFactory, fake: FakeAlchemy, db: asyncpg.Connection
) -> None:
    """A change made while sync is off (or failing) is sent by the next instance that can."""
    unsynced = await app_factory()  # sync off: the change is only recorded
    await _watch(unsynced, (await unsynced.register())["access_token"], A)
    assert await db.fetchval("SELECT desired AND synced IS NULL FROM alchemy_addresses WHERE address = $1", A)
    await _synced_app(app_factory, fake)
    await fake.wait_for(lambda: fake.addresses == {A})

    async def recorded() -> bool:  # the outcome is committed after Alchemy's answer arrives
        return bool(await db.fetchval("SELECT synced FROM alchemy_addresses WHERE address = $1", A))

    await eventually(recorded)


async def test_unauthorized_is_reported_and_not_retried_forever(
    app_factory: AppFactory, fake: FakeAlchemy, db: asyncpg.Connection
) -> None:
    app = await _synced_app(app_factory, fake, token="wrong-token")
    await _watch(app, (await app.register())["access_token"], A)
    await fake.wait_for(lambda: len(fake.calls) == 1)
    await asyncio.sleep(2.5)
    assert len(fake.calls) == 1
    error = await db.fetchval("SELECT last_error FROM alchemy_addresses WHERE address = $1", A)
    assert "401" in error


async def test_full_sync_replaces_the_list(
    migrated: tuple[str, str], fake: FakeAlchemy, db: asyncpg.Connection
) -> None:
    user_id = await db.fetchval(
        "INSERT INTO users (username, password_hash) VALUES ('full', 'x') RETURNING id"
    )
    addresses = [f"0x{i:040x}" for i in range(1, 702)]
    await db.executemany(
        "INSERT INTO watched_addresses (user_id, address) VALUES ($1, $2)", [(user_id, a) for a in addresses]
    )
    fake.addresses = {"0x" + "f" * 40}  # stale entry that must go
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINFEED_")}
    env |= {
        "CHAINFEED_DATABASE_URL": migrated[0],
        "CHAINFEED_ALCHEMY_API_URL": fake.url,
        "CHAINFEED_ALCHEMY_AUTH_TOKEN": TOKEN,
        "CHAINFEED_ALCHEMY_WEBHOOK_ID": WEBHOOK_ID,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chainfeed", "alchemy", "sync", "--full",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert "701 address(es)" in out.decode()
    assert fake.addresses == set(addresses)
    assert [method for method, _ in fake.calls] == ["PUT", "PATCH"]
    assert len(fake.calls[0][1]["addresses"]) == 500
    assert (
        await db.fetchval("SELECT count(*) FROM alchemy_addresses WHERE desired IS DISTINCT FROM synced") == 0
    )
    assert await db.fetchval("SELECT count(*) FROM alchemy_addresses WHERE synced") == 701
