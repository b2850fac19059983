"""Stream upkeep, once a process: the gauges SREs watch, trimming, and consumers that left.

Every few seconds: the stream's length, pending count, lag and active consumers go to their
gauges, and the stream is trimmed toward CHAINFEED_STREAM_MAXLEN (never past an unacknowledged
entry); every tenth run, consumers idle for ten minutes with nothing pending leave the group.
"""

from __future__ import annotations

import asyncio

import structlog

from chainfeed.broker.streams import ConsumerGroup
from chainfeed.config import Settings
from chainfeed.observability import metrics
from chainfeed.workers import supervise

__all__ = ["MAINTENANCE_SECONDS", "STALE_CONSUMER_MS", "Maintenance"]

log = structlog.get_logger(__name__)

#: How often maintenance runs; stale consumers are looked for every tenth run.
MAINTENANCE_SECONDS = 5.0
#: A consumer idle this long with nothing pending has left the group for good.
STALE_CONSUMER_MS = 10 * 60 * 1000


class Maintenance:
    """The upkeep of one consumer group's stream."""

    def __init__(self, group: ConsumerGroup, *, settings: Settings) -> None:
        self._group = group
        self._settings = settings
        self._runs = 0

    async def run(self) -> None:
        """Worker: :meth:`once` every :data:`MAINTENANCE_SECONDS`."""
        await supervise("stream-maintenance", self.once, idle=lambda: asyncio.sleep(MAINTENANCE_SECONDS))

    async def once(self) -> None:
        """Refresh the gauges and trim; now and then remove stale consumers."""
        group, settings = self._group, self._settings
        runs, self._runs = self._runs, self._runs + 1
        stats = await group.stats()
        metrics.REDIS_STREAM_LENGTH.labels(group.stream).set(stats.length)
        metrics.REDIS_STREAM_PENDING.labels(group.group).set(stats.pending)
        metrics.REDIS_STREAM_CONSUMER_LAG.set(stats.lag_seconds)
        metrics.REDIS_STREAM_CONSUMERS.labels(group.group).set(await group.active_consumers())
        trimmed = await group.trim(settings.stream_maxlen)
        if trimmed:
            log.debug("stream trimmed", stream=group.stream, removed=trimmed)
        if runs % 10 == 0:
            removed = await group.remove_stale_consumers(min_idle_ms=STALE_CONSUMER_MS)
            if removed:
                log.info("stale consumers removed", group=group.group, consumers=removed)
