"""Chaos harness: users with reconnecting WebSocket clients, a steady signed-webhook feeder, and
the end-of-scenario accounting (every committed item reached every client of its user, no
duplicate rows, nothing pending, poison in the dead-letter stream).

Used by ``tests/test_chaos.py`` (short form in CI; ``CHAINFEED_CHAOS_LONG=1`` for the long one).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tests.ingest_support import activity, address, sign, webhook

__all__ = ["ChaosClient", "Feeder", "Report", "User", "account", "check", "recovered", "start_clients"]

_addresses = itertools.count(0xC4A05000)


@dataclass
class User:
    """A registered user watching one address of its own."""

    id: int
    token: str
    address: str


@dataclass
class ChaosClient:
    """One tab: reconnects with ``since=<last id>`` after any drop, keeps every id it received."""

    user: User
    target: Callable[[], str]  # the /ws URL to (re)connect to
    ids: set[int] = field(default_factory=set)
    frames: int = 0
    connects: int = 0
    resumed: int = 0  # frames that arrived on a reconnection before any live one could
    ws: ClientConnection | None = None
    task: asyncio.Task[None] | None = None
    stopping: bool = False

    @property
    def last(self) -> int:
        """The resume point: a fresh user has no history, so 0 at first (as the feed page's
        newest history id would be)."""
        return max(self.ids) if self.ids else 0

    async def run(self) -> None:
        delay = 0.05
        while not self.stopping:
            query = f"?token={self.user.token}&since={self.last}"
            try:
                async with connect(self.target() + query, open_timeout=5, close_timeout=1) as ws:
                    self.ws = ws
                    self.connects += 1
                    delay = 0.05
                    async for raw in ws:
                        frame = json.loads(raw)
                        if frame.get("type") == "new_transaction":
                            self.frames += 1
                            if self.connects > 1 and frame["id"] not in self.ids:
                                self.resumed += 1
                            self.ids.add(int(frame["id"]))
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidStatus, TimeoutError):
                pass
            self.ws = None
            if not self.stopping:
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)

    def drop(self) -> None:
        """Cut the TCP connection without a close frame (a network drop)."""
        if self.ws is not None:
            self.ws.transport.abort()

    async def stop(self) -> None:
        self.stopping = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def account(http: httpx.AsyncClient) -> User:
    """Register a user and watch a fresh address."""
    name = f"chaos{next(_addresses):x}"
    response = await http.post("/api/auth/register", json={"username": name, "password": "chaos-password"})
    response.raise_for_status()
    body = response.json()
    watched = address(next(_addresses))
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    (await http.post("/api/addresses", json={"address": watched}, headers=headers)).raise_for_status()
    return User(id=int(body["user"]["id"]), token=body["access_token"], address=watched)


def start_clients(users: list[User], targets: list[Callable[[], str]]) -> list[ChaosClient]:
    """One client per (user, target): every user has a tab on every instance."""
    clients = [ChaosClient(user, target) for user in users for target in targets]
    for c in clients:
        c.task = asyncio.create_task(c.run())
    return clients


@dataclass
class Feeder:
    """Posts signed webhooks (one activity for a random user) and retries like Alchemy does."""

    users: list[User]
    urls: list[str]
    rate: float = 50.0
    duplicate: bool = False  # post every delivery twice, at once, to different instances
    published: int = 0  # deliveries answered 200
    retried: int = 0  # answers other than 200 (503 while a backend is down) and transport errors
    _task: asyncio.Task[None] | None = None
    _http: httpx.AsyncClient | None = None
    _deliveries: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=5)
        self._task = asyncio.create_task(self._run(self._http))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._deliveries)  # in-flight deliveries finish (or give up)
        if self._http is not None:
            await self._http.aclose()

    async def _run(self, http: httpx.AsyncClient) -> None:
        n = 0
        while True:
            user = random.choice(self.users)
            payload = webhook(activity("external", frm=address(0xFEED), to=user.address))
            body = json.dumps(payload).encode()
            for _ in range(2 if self.duplicate else 1):
                task = asyncio.create_task(self._deliver(http, body, self.urls[n % len(self.urls)]))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)
                n += 1
            await asyncio.sleep(1 / self.rate)

    async def _deliver(self, http: httpx.AsyncClient, body: bytes, url: str) -> None:
        headers = {"Content-Type": "application/json", "X-Alchemy-Signature": sign(body)}
        for attempt in range(300):
            # Retries go round the instances (a killed one is skipped once its URL is dropped).
            target = url if attempt == 0 or url in self.urls else self.urls[attempt % len(self.urls)]
            try:
                response = await http.post(target + "/webhooks/alchemy", content=body, headers=headers)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 200:
                self.published += 1
                return
            self.retried += 1
            await asyncio.sleep(0.2)


@dataclass
class Report:
    scenario: str
    published: int
    committed: int
    delivered: int
    resumed: int
    lost: int
    duplicate_rows: int
    pending: int
    dead_letters: int
    recovery_seconds: float

    def line(self) -> str:
        return (
            f"chaos {self.scenario}: published={self.published} committed={self.committed} "
            f"delivered={self.delivered} resumed={self.resumed} lost={self.lost} "
            f"duplicate_rows={self.duplicate_rows} pending={self.pending} "
            f"dead_letters={self.dead_letters} recovery={self.recovery_seconds:.2f}s"
        )


async def recovered(db: asyncpg.Connection, clients: list[ChaosClient], within: float = 60.0) -> float:
    """Seconds from now until a feed item committed from now on reaches a tab (pipeline flowing)."""
    started = time.monotonic()
    baseline = int(await db.fetchval("SELECT coalesce(max(id), 0) FROM feed_items"))
    while time.monotonic() - started < within:
        if any(c.ids and max(c.ids) > baseline for c in clients):
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"no new item delivered within {within}s of the fault healing")


async def _missing(db: asyncpg.Connection, clients: list[ChaosClient]) -> int:
    rows = await db.fetch("SELECT id, user_id FROM feed_items")
    by_user: dict[int, set[int]] = {}
    for row in rows:
        by_user.setdefault(row["user_id"], set()).add(row["id"])
    return sum(len(by_user.get(c.user.id, set()) - c.ids) for c in clients)


async def check(
    scenario: str,
    *,
    db: asyncpg.Connection,
    redis: Redis,
    clients: list[ChaosClient],
    feeder: Feeder,
    recovery: float,
    within: float = 60.0,
) -> Report:
    """Wait until every committed item reached every client of its user and nothing is pending."""
    deadline = time.monotonic() + within
    missing = pending = -1
    while time.monotonic() < deadline:
        missing = await _missing(db, clients)
        summary: Any = await redis.xpending("feed:stream", "feed:consumers")
        pending = int(summary["pending"])
        if missing == 0 and pending == 0:
            break
        await asyncio.sleep(0.1)
    committed = int(await db.fetchval("SELECT count(*) FROM feed_items"))
    duplicate_items = int(
        await db.fetchval("SELECT count(*) - count(DISTINCT (user_id, transaction_id)) FROM feed_items")
    )
    duplicate_txs = int(
        await db.fetchval("SELECT count(*) - count(DISTINCT (network, hash, transfer_key)) FROM transactions")
    )
    report = Report(
        scenario=scenario,
        published=feeder.published,
        committed=committed,
        delivered=sum(c.frames for c in clients),
        resumed=sum(c.resumed for c in clients),
        lost=missing,
        duplicate_rows=duplicate_items + duplicate_txs,
        pending=pending,
        dead_letters=int(await redis.xlen("feed:stream:dead")),
        recovery_seconds=recovery,
    )
    print(report.line())
    return report
