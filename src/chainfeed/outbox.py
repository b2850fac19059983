"""Transactional outbox relay: publishes committed feed items to the stream (issue: ingest).

Placeholder until the ingest work lands; :func:`start` is called by the runtime at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chainfeed.runtime import Runtime

__all__ = ["OutboxRelay", "start"]


class OutboxRelay:
    """Publishes unpublished feed items; placeholder."""


async def start(runtime: Runtime) -> None:
    """Start the relay worker(s) on ``runtime``; nothing yet."""
