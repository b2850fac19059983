"""Synthetic, signed Alchemy Address Activity webhooks: ``chainfeed simulate`` and ``dev --simulate``.

:class:`ActivityFactory` builds payloads shaped like Alchemy's (one block per delivery; external,
internal, ERC-20, ERC-721 and ERC-1155 transfers in realistic proportions; swaps that put two
token transfers in one transaction), always with a watched address on one side so every
delivery produces feed items. :func:`simulate` posts them at a steady rate, signed like Alchemy
signs them, and reports progress. The benchmark builds its load from the same factory.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from chainfeed.domain.signature import sign

__all__ = ["ActivityFactory", "SimulationStats", "simulate", "webhook_url"]

WEBHOOK_PATH = "/webhooks/alchemy"

#: (weight, category) of simulated activity: mostly plain ETH and ERC-20 moves.
_CATEGORIES = ((35, "external"), (35, "token"), (12, "internal"), (12, "erc721"), (6, "erc1155"))
_TOKENS = (
    ("USDC", "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", 6),
    ("USDT", "0xdac17f958d2ee523a2206206994597c13d831ec7", 6),
    ("DAI", "0x6b175474e89094c44da98b954eedeac495271d0f", 18),
    ("WETH", "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2", 18),
)
_NFTS = (
    ("BAYC", "0xbc4ca0eda7647a8ab7c2061c2e118a18a936f13d"),
    ("PUNK", "0xb47e3cd837ddf8e4c57f05d70ab865de6e193bbb"),
    ("AZUKI", "0xed5af388653567af2f388e6224dc7c4b3241c544"),
)
_MULTI_TOKENS = (("OPENSTORE", "0x495f947276749ce646f68ac8c248420045cb7b5e"),)
_TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
_TRANSFER_SINGLE_TOPIC = "0xc3d58168c5ae7397731d063d5bbf3d657854427343f4c083240f7aacaa2d0f62"


class ActivityFactory:
    """Random but realistic ADDRESS_ACTIVITY payloads; seed ``rng`` for reproducible runs."""

    def __init__(self, rng: random.Random | None = None, *, network: str = "ETH_MAINNET") -> None:
        self._rng = rng or random.Random()  # noqa: S311 - synthetic data, not secrets
        self._network = network
        self._block = 19_000_000 + self._rng.randrange(1_000_000)
        self._categories = [c for weight, c in _CATEGORIES for _ in range(weight)]

    def webhook(self, watched: Sequence[str], *, activities: int = 1) -> dict[str, Any]:
        """One delivery of about ``activities`` transfers (one block), each touching a ``watched`` address."""
        rng = self._rng
        self._block += 1
        block_hash = self._hex(32)
        entries: list[dict[str, Any]] = []
        while len(entries) < activities:
            entries.extend(self._transaction(rng.choice(watched), block_hash))
        return {
            "webhookId": "wh_simulated0000000",
            "id": f"whevt_{self._hex(8)[2:]}",
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "type": "ADDRESS_ACTIVITY",
            "event": {"network": self._network, "activity": entries[:activities]},
        }

    def _transaction(self, watched: str, block_hash: str) -> list[dict[str, Any]]:
        """The activities of one transaction: usually one transfer, sometimes a two-legged swap."""
        rng = self._rng
        tx = self._hex(32)
        category = rng.choice(self._categories)
        outgoing = rng.random() < 0.5
        other = self._hex(20)
        frm, to = (watched, other) if outgoing else (other, watched)
        first = self._activity(category, tx=tx, frm=frm, to=to, block_hash=block_hash, log_index=0)
        if category == "token" and rng.random() < 0.3:
            back = self._activity("token", tx=tx, frm=to, to=frm, block_hash=block_hash, log_index=1)
            return [first, back]
        return [first]

    def _activity(
        self, category: str, *, tx: str, frm: str, to: str, block_hash: str, log_index: int
    ) -> dict[str, Any]:
        rng = self._rng
        entry: dict[str, Any] = {
            "blockNum": hex(self._block),
            "hash": tx,
            "fromAddress": frm,
            "toAddress": to,
            "category": category,
        }
        if category in ("external", "internal"):
            value = round(rng.uniform(0.001, 5), 6)
            entry |= {"value": value, "asset": "ETH", "rawContract": self._raw(value, 18, None)}
            if category == "internal":
                entry["typeTraceAddress"] = f"call_{rng.randrange(4)}_{rng.randrange(4)}"
            return entry
        if category == "token":
            symbol, contract, decimals = rng.choice(_TOKENS)
            value = round(rng.uniform(1, 25_000), 2)
            entry |= {"value": value, "asset": symbol, "rawContract": self._raw(value, decimals, contract)}
        elif category == "erc721":
            symbol, contract = rng.choice(_NFTS)
            entry |= {"asset": symbol, "erc721TokenId": hex(rng.randrange(10_000))}
            entry["rawContract"] = {"rawValue": "0x", "address": contract}
        else:
            symbol, contract = rng.choice(_MULTI_TOKENS)
            token = {"tokenId": self._hex(32), "value": hex(rng.randrange(1, 5))}
            entry |= {"asset": symbol, "erc1155Metadata": [token]}
            entry["rawContract"] = {"rawValue": None, "address": contract}
        topic = _TRANSFER_SINGLE_TOPIC if category == "erc1155" else _TRANSFER_TOPIC
        entry["log"] = {
            "address": entry["rawContract"]["address"],
            "topics": [topic, _pad(frm), _pad(to)],
            "data": "0x",
            "blockNumber": hex(self._block),
            "transactionHash": tx,
            "transactionIndex": hex(rng.randrange(200)),
            "blockHash": block_hash,
            "logIndex": hex(rng.randrange(400) * 2 + log_index),
            "removed": False,
        }
        return entry

    @staticmethod
    def _raw(value: float, decimals: int, contract: str | None) -> dict[str, Any]:
        raw: dict[str, Any] = {"rawValue": hex(int(value * 10**decimals)), "decimals": decimals}
        if contract:
            raw["address"] = contract
        return raw

    def _hex(self, size: int) -> str:
        return "0x" + self._rng.randbytes(size).hex()


def _pad(address: str) -> str:
    return "0x" + address[2:].rjust(64, "0")


def webhook_url(url: str) -> str:
    """The webhook endpoint for ``url``: an app's base URL gets ``/webhooks/alchemy`` appended."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path=WEBHOOK_PATH)
    return urlunsplit(parts)


@dataclass
class SimulationStats:
    """What the simulator has done so far; ``line()`` is the progress display."""

    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    accepted: int = 0
    activities: int = 0
    feed_items: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1

    def line(self) -> str:
        """``sent 120 (118 ok) · 310 activities · 290 feed items · 24.0/s · p50 3.1 ms`` and failures."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        ordered = sorted(self.latencies[-2000:])
        p50 = f" · p50 {ordered[len(ordered) // 2] * 1000:.1f} ms" if ordered else ""
        failed = "".join(f" · {why} {count}" for why, count in sorted(self.failures.items()))
        return (
            f"sent {self.sent} ({self.accepted} ok) · {self.activities} activities · "
            f"{self.feed_items} feed items · {self.sent / elapsed:.1f}/s{p50}{failed}"
        )


AddressSource = Callable[[], Awaitable[Sequence[str]]]


async def simulate(
    *,
    url: str,
    rate: float,
    duration: float | None,
    signing_key: str,
    addresses: AddressSource,
    activities: int = 2,
    refresh_every: float = 5.0,
    progress: Callable[[SimulationStats], None] | None = None,
    progress_every: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
    client: httpx.AsyncClient | None = None,
) -> SimulationStats:
    """POST ``rate`` signed webhooks per second for ``duration`` s (None: until ``should_stop``).

    Watched addresses are re-read every ``refresh_every`` s, so an address a user has just added
    starts moving within seconds. Sends overlap (at most 32 in flight) so a slow answer does not
    slow the pace; the rate is held on average, without catch-up bursts after a stall.
    """
    stats = SimulationStats()
    factory = ActivityFactory()
    target = webhook_url(url)
    watched: Sequence[str] = await addresses()
    refreshed = time.monotonic()
    own_client = client is None
    http = client or httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=32))
    in_flight = asyncio.Semaphore(32)
    tasks: set[asyncio.Task[None]] = set()
    reporter = asyncio.create_task(_report(stats, progress, progress_every)) if progress else None
    end = None if duration is None else time.monotonic() + duration
    next_at = time.monotonic()
    try:
        while not should_stop() and (end is None or time.monotonic() < end):
            if time.monotonic() - refreshed >= refresh_every:
                watched = await addresses() or watched
                refreshed = time.monotonic()
            await in_flight.acquire()
            body = json.dumps(factory.webhook(watched, activities=activities)).encode()
            task = asyncio.create_task(_send(http, target, body, signing_key, stats))
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: in_flight.release())
            tasks.add(task)
            next_at = max(next_at + 1 / rate, time.monotonic() - 1.0)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks)
    finally:
        if reporter:
            reporter.cancel()
        if own_client:
            await http.aclose()
    if progress:
        progress(stats)
    return stats


async def _send(http: httpx.AsyncClient, url: str, body: bytes, key: str, stats: SimulationStats) -> None:
    started = time.perf_counter()
    stats.sent += 1
    try:
        response = await http.post(
            url,
            content=body,
            headers={"Content-Type": "application/json", "X-Alchemy-Signature": sign(body, key)},
        )
    except httpx.HTTPError as exc:
        stats.fail(type(exc).__name__)
        return
    if response.status_code != 200:
        stats.fail(f"HTTP {response.status_code}")
        return
    stats.latencies.append(time.perf_counter() - started)
    if len(stats.latencies) > 10_000:
        del stats.latencies[:5_000]
    answer = response.json()
    stats.accepted += 1
    stats.activities += int(answer.get("activities", 0))
    stats.feed_items += int(answer.get("new_feed_items", 0))


async def _report(stats: SimulationStats, progress: Callable[[SimulationStats], None], every: float) -> None:
    while True:
        await asyncio.sleep(every)
        progress(stats)
