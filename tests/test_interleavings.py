"""Proof by interleaving: under random, real failures every tab follows its user's feed exactly.

A seeded runner drives two app instances on one Redis and one PostgreSQL: signed webhooks to
either instance (sometimes to both at once), consumers that die holding entries (the claimer
takes them over), ``CLIENT KILL TYPE pubsub``, tabs whose TCP connection drops and that come back
with ``since=<the last item they received>``. Afterwards every tab must have received exactly
its user's items 1, 2, ..., n in order: no gap, no repeat, across all its connections
(docs/design/delivery.md states the invariant).

CI runs the fixed seeds below. ``CHAINFEED_INTERLEAVING_SEEDS=K`` adds K random seeds and
``CHAINFEED_INTERLEAVING_STEPS=N`` lengthens each run (the long form, by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.chaos_harness import ChaosClient, User
from tests.conftest import AppFactory, RunningApp
from tests.ingest_support import activity, address, post_webhook, watch, webhook

STREAM, GROUP = "feed:stream", "feed:consumers"
STEPS = int(os.environ.get("CHAINFEED_INTERLEAVING_STEPS", "30"))
SEEDS = [11, 12, 13] + [
    random.SystemRandom().randrange(1 << 30)
    for _ in range(int(os.environ.get("CHAINFEED_INTERLEAVING_SEEDS", "0")))
]


@dataclass(eq=False)
class Tab(ChaosClient):
    """A chaos tab that also records each item's ``seq`` in arrival order, and resumes from the
    last item it received (not the highest id: the feed's order is ``seq``)."""

    name: str = ""
    received: list[tuple[int, int]] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.received[-1][0] if self.received else 0

    async def run(self) -> None:
        while not self.stopping:
            url = f"{self.target()}?token={self.user.token}&since={self.last}"
            with contextlib.suppress(OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                async with connect(url, open_timeout=5, close_timeout=1) as ws:
                    self.ws, self.connects = ws, self.connects + 1
                    async for raw in ws:
                        frame = json.loads(raw)
                        if frame.get("type") == "new_transaction":
                            self.received.append((int(frame["id"]), int(frame["seq"])))
            self.ws = None
            if not self.stopping:
                await asyncio.sleep(0.02)


@pytest.mark.parametrize("seed", SEEDS)
async def test_every_tab_gets_its_users_feed_in_order_under_random_failures(
    app_factory: AppFactory, redis: Redis, db: asyncpg.Connection, seed: int
) -> None:
    rng = random.Random(seed)
    apps = [await app_factory(claim_idle_ms=300), await app_factory(claim_idle_ms=300)]
    users: list[User] = []
    for n in range(3):
        body = await apps[0].register()
        watched = address(1000 * seed % 7919 + n)
        await watch(apps[0], body["access_token"], watched)
        users.append(User(body["user"]["id"], body["access_token"], watched))
    tabs = [
        Tab(user, _url_of(rng.choice(apps)), name=f"u{u}t{t}")
        for u, user in enumerate(users)
        for t in range(rng.choice((1, 2)))
    ]
    for tab in tabs:
        tab.task = asyncio.create_task(tab.run())
    schedule: list[str] = []
    stolen = 0

    async def send_webhook(app: RunningApp) -> None:
        moves = []
        for _ in range(rng.randint(1, 3)):
            watched = rng.choice(users).address
            other = address(rng.randrange(10_000, 20_000))
            frm, to = (watched, other) if rng.random() < 0.5 else (other, watched)
            moves.append(activity("external", frm=frm, to=to))
        response = await post_webhook(app, webhook(*moves))
        assert response.status_code == 200, response.text

    try:
        async with asyncio.timeout(60):
            for _ in range(STEPS):
                action = rng.choices(
                    ["webhook", "both", "steal", "kill_pubsub", "drop_tab", "pause"], [35, 15, 15, 10, 15, 10]
                )[0]
                schedule.append(action)
                if action == "webhook":
                    await send_webhook(rng.choice(apps))
                elif action == "both":  # two instances ingesting at once
                    await asyncio.gather(send_webhook(apps[0]), send_webhook(apps[1]))
                elif action == "steal":  # a consumer takes an entry and dies with it
                    stolen += 1
                    await redis.xreadgroup(GROUP, f"dead-{seed}-{stolen}", {STREAM: ">"}, count=1)
                elif action == "kill_pubsub":
                    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                elif action == "drop_tab":
                    rng.choice(tabs).drop()
                await asyncio.sleep(rng.uniform(0, 0.05))
            await _settled(db, tabs, within=20)
    finally:
        for tab in tabs:
            await tab.stop()
    for tab in tabs:
        rows = await db.fetch("SELECT id, seq FROM feed_items WHERE user_id = $1 ORDER BY seq", tab.user.id)
        expected = [(row["id"], row["seq"]) for row in rows]
        assert tab.received == expected, (
            f"seed {seed}, tab {tab.name} ({tab.connects} connections), schedule {schedule}:"
            f" got seqs {[s for _, s in tab.received]}, expected 1..{len(expected)}"
        )


def _url_of(app: RunningApp) -> Callable[[], str]:
    return lambda: app.ws_url


async def _settled(db: asyncpg.Connection, tabs: list[Tab], *, within: float) -> None:
    """Until the outbox is empty and every tab has its user's last item (or the time is up)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if not await db.fetchval("SELECT count(*) FROM feed_outbox"):
            last = {r["id"]: r["feed_seq"] for r in await db.fetch("SELECT id, feed_seq FROM users")}
            if all((tab.received[-1][1] if tab.received else 0) >= last[tab.user.id] for tab in tabs):
                return
        await asyncio.sleep(0.05)
