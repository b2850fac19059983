"""Helpers for the delivery tests: WebSocket clients, deadlines instead of sleeps, stream entries."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chainfeed.config import Settings
from chainfeed.devtools.embedded import free_port
from tests.conftest import RunningApp

DEFAULT_TIMEOUT = 5.0


def ws_url(app: RunningApp, token: str | None = None, **params: object) -> str:
    """The app's /ws URL with ``token`` and any extra query parameters."""
    query = {"token": token, **params} if token is not None else dict(params)
    if not query:
        return app.ws_url
    return app.ws_url + "?" + "&".join(f"{key}={value}" for key, value in query.items())


@asynccontextmanager
async def client(app: RunningApp, token: str | None, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    """A connected WebSocket client (``since=`` and connect options go through ``kwargs``)."""
    params = {key: kwargs.pop(key) for key in ("since",) if key in kwargs}
    async with connect(ws_url(app, token, **params), open_timeout=DEFAULT_TIMEOUT, **kwargs) as ws:
        yield ws


async def ready(ws: ClientConnection) -> None:
    """Wait until the server serves this connection live (its pong comes after registration)."""
    await ws.send(json.dumps({"type": "ping"}))
    frame = await recv_json(ws)
    while frame.get("type") == "resumed":  # a resume's end comes first when there was one
        frame = await recv_json(ws)
    assert frame == {"type": "pong"}, frame


async def recv_json(ws: ClientConnection, within: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """The next frame, decoded; fails the test if none arrives within ``within`` seconds."""
    async with asyncio.timeout(within):
        raw = await ws.recv()
    frame: dict[str, Any] = json.loads(raw)
    return frame


async def recv_frames(
    ws: ClientConnection, count: int, within: float = DEFAULT_TIMEOUT
) -> list[dict[str, Any]]:
    """The next ``count`` push frames (pongs and ``resumed`` skipped)."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        while len(frames) < count:
            frame = json.loads(await ws.recv())
            if frame.get("type") not in ("pong", "resumed"):
                frames.append(frame)
    return frames


async def closed_with(ws: ClientConnection, within: float = DEFAULT_TIMEOUT) -> tuple[int | None, str | None]:
    """Read (discarding frames) until the server closes; returns its close code and reason."""
    async with asyncio.timeout(within):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as closed:
            if closed.rcvd is None:
                return None, None
            return closed.rcvd.code, closed.rcvd.reason


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], within: float = DEFAULT_TIMEOUT, interval: float = 0.02
) -> None:
    """Wait until ``condition()`` (plain or awaitable) holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result if isinstance(result, bool) else await result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


async def xadd_hand(
    redis: Redis, user_id: int | str, payload: str = '{"test":"data"}', type_: str = "test"
) -> str:
    """The manual ``XADD feed:stream '*' user_id ... type ... payload ...`` of the SPEC."""
    entry_id = await redis.xadd("feed:stream", {"user_id": str(user_id), "type": type_, "payload": payload})
    return str(entry_id)


async def xadd_item(
    redis: Redis, user_id: int, item_id: int, payload: dict[str, Any] | str, *, seq: int | None = None
) -> str:
    """An entry as the outbox relay writes it (a committed feed item; ``seq`` defaults to its id)."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    fields = {
        "user_id": str(user_id),
        "type": "new_transaction",
        "payload": text,
        "feed_item_id": str(item_id),
        "seq": str(item_id if seq is None else seq),
        "created_at": "2024-05-01T12:00:00+00:00",
    }
    entry_id = await redis.xadd("feed:stream", fields)  # type: ignore[arg-type]  # dict[str, str] is a FieldT mapping
    return str(entry_id)


@asynccontextmanager
async def served_in_subprocess(
    settings: Settings, log_path: Path, *args: str, ready_path: str = "/healthz", **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``python -m chainfeed serve [args]`` in a child process (its own PID, so it can be SIGKILLed).

    Yields the process and its base URL once ``ready_path`` answers 200; everything it prints goes
    to ``log_path``. Stopped with SIGTERM (SIGKILL after 15 s), or found dead, on exit.
    """
    database_url, redis_url = settings.require_services()
    port = free_port()
    environ = {
        **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        "CHAINFEED_DATABASE_URL": database_url,
        "CHAINFEED_REDIS_URL": redis_url,
        "CHAINFEED_JWT_SECRET": settings.jwt_secret,
        "CHAINFEED_ALCHEMY_SIGNING_KEYS": ",".join(settings.alchemy_signing_keys),
        "CHAINFEED_LOG_FORMAT": "json",
        "CHAINFEED_PASSWORD_WORK": str(settings.password_work),
        "CHAINFEED_REGISTRATIONS_PER_IP_HOUR": str(settings.registrations_per_ip_hour),
        **env,
    }
    command = [sys.executable, "-m", "chainfeed", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    with log_path.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *command, env=environ, stdout=out, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as http:

            async def ready() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"server exited early; its output is in {log_path}")
                try:
                    return (await http.get(ready_path)).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, within=40, interval=0.1)
        yield process, base_url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
