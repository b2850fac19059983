"""Helpers for the observability tests: ``chainfeed serve`` in a child process, Prometheus text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from chainfeed.config import Settings
from tests.delivery_support import served_in_subprocess


@asynccontextmanager
async def serve(
    settings: Settings, log_path: Path, *args: str, **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``python -m chainfeed serve [args]``, ready once /readyz says PostgreSQL, Redis and the
    consumer are up (see ``delivery_support.served_in_subprocess``)."""
    async with served_in_subprocess(settings, log_path, *args, ready_path="/readyz", **env) as served:
        yield served


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` (labels may be a subset) in Prometheus text."""
    total: float | None = None
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                total = (total or 0.0) + item.value
    return total
