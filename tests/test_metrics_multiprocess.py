"""``chainfeed serve --workers 2``: /metrics reports the sum over every worker, whichever answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Awaitable
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from chainfeed.config import Settings
from tests.ingest_support import eventually
from tests.observability_support import sample, serve

REQUESTS = 24


async def test_metrics_sum_over_workers(settings: Settings, tmp_path: Path) -> None:
    """Webhooks spread over two workers (one connection each) are all counted, in every scrape."""
    async with serve(settings, tmp_path / "serve.log", "--workers", "2") as (_, base_url):
        for _ in range(REQUESTS):
            # A fresh connection per request, so the kernel spreads them over both workers.
            async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
                response = await http.post(
                    "/webhooks/alchemy", content=b"{}", headers={"X-Alchemy-Signature": "0"}
                )
                assert response.status_code == 401
        seen: set[float | None] = set()
        pids: set[float | None] = set()
        for _ in range(10):
            async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
                text = (await http.get("/metrics")).text
            seen.add(sample(text, "webhook_requests_total", outcome="bad_signature"))
            seen.add(sample(text, "http_requests_total", path="/webhooks/alchemy"))
            pids.add(sample(text, "websocket_active_connections"))
        assert seen == {float(REQUESTS)}, seen
        assert pids == {0.0}, pids
    log = (tmp_path / "serve.log").read_text()
    assert log.count("Started server process") == 2, log


def _worker_pids(log: str) -> set[int]:
    """The pids uvicorn's workers announce (``Started server process [pid]``)."""
    return {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", log)}


async def test_a_dead_workers_connections_leave_the_totals(settings: Settings, tmp_path: Path) -> None:
    """Workers killed with open tabs (uvicorn starts new ones): their connections no longer count,
    so websocket_active_connections (and alerts on it) come back to what is really open."""
    log_path = tmp_path / "serve.log"
    async with serve(settings, log_path, "--workers", "2") as (_process, base_url):
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
            session = (
                await http.post("/api/auth/register", json={"username": "multi", "password": "correct-horse"})
            ).json()
        token = session["access_token"]
        ws_base = base_url.replace("http://", "ws://")
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(3):
                await stack.enter_async_context(connect(f"{ws_base}/ws?token={token}", open_timeout=5))

            async def open_connections() -> float | None:
                async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
                    return sample((await http.get("/metrics")).text, "websocket_active_connections")

            await eventually(lambda: _is(open_connections(), 3.0), what="3 connections counted")
            workers = _worker_pids(await asyncio.to_thread(log_path.read_text))
            assert len(workers) == 2, workers
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            await eventually(lambda: _restarted(log_path), within=30, what="uvicorn started new workers")
            await eventually(
                lambda: _is(open_connections(), 0.0), within=15, what="the dead workers' tabs gone"
            )


async def _is(value: Awaitable[float | None], expected: float) -> bool:
    try:
        return await value == expected
    except httpx.HTTPError:
        return False


async def _restarted(log_path: Path) -> bool:
    text = await asyncio.to_thread(log_path.read_text)
    return text.count("Started server process") >= 4
