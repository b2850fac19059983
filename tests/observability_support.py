"""Helpers for the observability tests: ``chainfeed serve`` in a child process, Prometheus text."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from chainfeed.config import Settings
from chainfeed.embedded import free_port
from tests.delivery_support import eventually


@asynccontextmanager
async def serve(
    settings: Settings, log_path: Path, *args: str, **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``python -m chainfeed serve [args]`` on a loopback port; yields the process and base URL.

    Everything it prints goes to ``log_path``; it is stopped with SIGTERM (SIGKILL after 15 s).
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

            async def healthy() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"server exited early; its output is in {log_path}")
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(healthy, within=40, interval=0.1)
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


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` (labels may be a subset) in Prometheus text."""
    total: float | None = None
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                total = (total or 0.0) + item.value
    return total
