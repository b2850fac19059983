"""Helpers for the ingest tests: Alchemy-shaped payloads, signed posts, stream reads, metric reads,
waiting with a deadline, and a TCP proxy that can cut a server off from the app."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from tests.conftest import SIGNING_KEY, RunningApp

_counter = itertools.count(1)
BLOCK_HASH = "0xa99ec54413bd3db3f9bdb0c1ad3ab1400ee0ecefb47803e17f9d33bc4d0a1e91"
OTHER_BLOCK_HASH = "0x" + "bb" * 32


def address(n: int) -> str:
    """A distinct, valid, lower-case address."""
    return f"0x{n:040x}"


def tx_hash(n: int | None = None) -> str:
    return f"0x{next(_counter) if n is None else n:064x}"


def activity(
    category: str,
    *,
    frm: str | None,
    to: str | None,
    hash_: str | None = None,
    log_index: int | None = None,
    trace: str | None = None,
    removed: bool = False,
    block_hash: str = BLOCK_HASH,
    block_num: int = 0xDF34A3,
    value: float | None = 1.5,
    asset: str | None = "ETH",
    token_id: str | None = None,
) -> dict[str, Any]:
    """One ADDRESS_ACTIVITY entry shaped like Alchemy's documented examples for ``category``."""
    entry: dict[str, Any] = {
        "blockNum": hex(block_num),
        "hash": hash_ or tx_hash(),
        "fromAddress": frm,
        "toAddress": to,
        "value": value,
        "asset": asset,
        "category": category,
        "rawContract": {"rawValue": "0x14d1120d7b160000", "decimals": 18},
    }
    if category == "internal":
        entry["typeTraceAddress"] = trace or "call_0"
    if category in ("token", "erc20", "erc721", "erc1155"):
        entry["rawContract"] = {
            "rawValue": "0x0000000000000000000000000000000000000000000000000000000011783b21",
            "address": "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
            "decimals": 6,
        }
        entry["log"] = {
            "address": "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
            "topics": ["0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"],
            "data": "0x",
            "blockNumber": hex(block_num),
            "transactionHash": entry["hash"],
            "transactionIndex": "0x46",
            "blockHash": block_hash,
            "logIndex": hex(0 if log_index is None else log_index),
            "removed": removed,
        }
    if category == "erc721":
        entry["erc721TokenId"] = token_id or "0x1"
        entry["value"] = None
    if category == "erc1155":
        entry["erc1155Metadata"] = [{"tokenId": token_id or "0x2", "value": "0x1"}]
        entry["value"] = None
    return entry


def nft_without_hash(to: str) -> dict[str, Any]:
    """Alchemy's NFT activity example: no hash, blockNum, value or asset; a log without
    transactionHash or logIndex; the contract in contractAddress. A mint to ``to``."""
    return {
        "fromAddress": "0x0000000000000000000000000000000000000000",
        "toAddress": to,
        "contractAddress": "0xe5a8a8ef4c5d8f8f35fb8dad0bd5d3d2c1b6e3a3",
        "erc721TokenId": "0x1",
        "category": "erc721",
        "log": {"address": "0xe5a8a8ef4c5d8f8f35fb8dad0bd5d3d2c1b6e3a3", "data": "0x", "removed": False},
    }


def webhook(
    *activities: dict[str, Any], event_id: str | None = None, network: str = "ETH_MAINNET"
) -> dict[str, Any]:
    """The envelope Alchemy posts."""
    return {
        "webhookId": "wh_k63lg72rxda78gce",
        "id": event_id or f"whevt_{next(_counter):016x}",
        "createdAt": "2024-01-23T07:42:26.411977228Z",
        "type": "ADDRESS_ACTIVITY",
        "event": {"network": network, "activity": list(activities)},
    }


def sign(body: bytes, key: str = SIGNING_KEY) -> str:
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


async def post_webhook(
    app: RunningApp, payload: dict[str, Any] | bytes, *, key: str | None = SIGNING_KEY
) -> httpx.Response:
    """POST ``payload`` signed with ``key`` (unsigned when ``key`` is None)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-Alchemy-Signature"] = sign(body, key)
    return await app.http.post("/webhooks/alchemy", content=body, headers=headers)


async def watch(app: RunningApp, token: str, watched: str) -> None:
    response = await app.http.post("/api/addresses", json={"address": watched}, headers=app.auth(token))
    assert response.status_code in (200, 201), response.text


async def stream_entries(redis: Redis, stream: str = "feed:stream") -> list[dict[str, str]]:
    """Every entry of ``stream`` in order (fields only)."""
    entries: list[tuple[str, dict[str, str]]] = await redis.xrange(stream)  # type: ignore[assignment]
    return [fields for _id, fields in entries]


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 10.0, what: str = "") -> None:
    """Poll ``check`` until it is true, failing after ``within`` seconds (no bare sleeps)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


def metric(name: str, **labels: str) -> float:
    """The current value of a sample in this process's registry (0 when not yet recorded)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Metrics:
    """Counter deltas across a test: ``m = Metrics(); ...; m.delta("x_total", outcome="a")``."""

    def __init__(self) -> None:
        self._start = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in REGISTRY.collect()
            for s in family.samples
        }

    def delta(self, name: str, **labels: str) -> float:
        return metric(name, **labels) - self._start.get((name, tuple(sorted(labels.items()))), 0.0)


class TcpProxy:
    """A loopback TCP proxy to ``target``; :meth:`cut` makes the server look down to its clients,
    :meth:`freeze` makes it a black hole (connections stay open, nothing comes back)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    def freeze(self) -> None:
        """Stop forwarding in both directions; new connections are accepted and hang."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again (what was held back is delivered)."""
        self._flowing.set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
