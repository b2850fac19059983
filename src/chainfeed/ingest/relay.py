"""Transactional outbox relay: every committed feed item reaches the stream, numbered in its feed.

Ingest commits feed items, and their ids in ``feed_outbox``, in the same transaction as the
transfers, then calls :meth:`OutboxRelay.wake`. The relay, per batch:

1. in one short transaction under the cluster-wide outbox lock, numbers the oldest batch's items
   in their users' feeds (``seq``) and leases the batch (``storage.outbox.take_batch``), commits;
2. XADDs them in one pipelined round trip, each entry carrying its ``seq``;
3. deletes those outbox entries (or, when the XADDs failed, ends the lease at once).

It also sweeps every ``sweep_interval`` seconds, so items left behind by a crash, a Redis outage
or another instance are published once things recover; the sweep also settles re-orgs a crash
left unsettled between a delivery's commit and its ``transaction_updated`` items
(``storage.ingest.settle_pending``), whose items it then publishes. Delivery to the stream is **at least
once**: a crash between the XADD and the delete publishes the batch again once its lease runs
out, with the same numbers. Connections drop what they already sent by ``seq``
(docs/design/delivery.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from chainfeed.broker.client import Redis
from chainfeed.broker.publisher import StreamPublisher
from chainfeed.observability.metrics import OUTBOX_BACKLOG, STAGE_DURATION
from chainfeed.storage import outbox as store
from chainfeed.storage.ingest import settle_pending
from chainfeed.storage.pool import Pool
from chainfeed.workers import OUTAGES, supervise

__all__ = ["OutboxRelay"]

log = structlog.get_logger(__name__)


class OutboxRelay:
    """Publishes unpublished feed items to the stream; one per process, safe with many processes."""

    def __init__(
        self,
        *,
        pool: Pool,
        redis: Redis,
        stream: str,
        batch_size: int = 1000,
        sweep_interval: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self._pool = pool
        self._publisher = StreamPublisher(redis, stream, timeout=timeout)
        self._batch_size = batch_size
        self._sweep_interval = sweep_interval
        self._timeout = timeout
        self._wake = asyncio.Event()
        self._backlog_at = 0.0
        self._settled_at = 0.0

    def wake(self) -> None:
        """New items were committed: publish now instead of at the next sweep."""
        self._wake.set()

    async def run(self) -> None:
        """Worker: publish on every wake-up and at least every ``sweep_interval`` s, until cancelled.

        An outage pauses it (one warning, one line when it resumes), never ends it.
        """
        try:
            await supervise("outbox-relay", self._pass, idle=self._sleep)
        finally:
            await self._publisher.close()

    async def move_past_restore(self) -> int:
        """At start-up: if PostgreSQL was restored behind what was published, move its id
        sequence and feed counters past it (``storage.outbox.move_past_restore``); the shift."""
        shift = await store.move_past_restore(self._pool, await self._publisher.high_water())
        if shift:
            log.warning("postgresql is behind what was published (a restore?); ids and feed numbers moved on",
                        shift=shift)  # fmt: skip
        return shift

    async def close(self) -> None:
        """Close the relay's Redis connection (for relays used without :meth:`run`)."""
        await self._publisher.close()

    async def drain(self) -> int:
        """Publish batches until none is left (or another relay has them); returns how many."""
        total = 0
        while True:
            published = await self.publish_batch()
            total += published
            if published < self._batch_size:
                return total

    async def publish_batch(self) -> int:
        """Publish the oldest unleased batch; returns its size (0 when there is nothing)."""
        async with self._pool.acquire() as conn:
            items, taken = await store.take_batch(conn, limit=self._batch_size, lock_timeout=self._timeout)
            if not taken:
                return 0
            started = time.perf_counter()
            try:
                if items:
                    await self._publisher.publish(items)
            except BaseException:
                with contextlib.suppress(*OUTAGES):
                    await store.release_batch(conn, taken)
                raise
            await store.mark_published(conn, taken)
        STAGE_DURATION.labels(stage="publish").observe(time.perf_counter() - started)
        return len(taken)

    async def _pass(self) -> None:
        """One drain; the backlog gauge is refreshed whatever happened (it matters most in an outage)."""
        self._wake.clear()
        try:
            await self._settle()
            await self.drain()
        finally:
            await self._measure_backlog()

    async def _settle(self) -> None:
        """About once per sweep interval: re-orgs left pending by a crash get their updates."""
        now = time.monotonic()
        if now - self._settled_at < self._sweep_interval:
            return
        self._settled_at = now
        if made := await settle_pending(self._pool, budget=self._timeout):
            log.warning("settled re-orgs a crash left pending", update_items=made)

    async def _sleep(self) -> None:
        """Until woken, or the sweep interval passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._sweep_interval):
                await self._wake.wait()

    async def _measure_backlog(self) -> None:
        """Refresh the backlog gauge about once per sweep interval (a cheap partial-index count).

        It matters most during an outage of Redis, when it grows; with PostgreSQL down too, the
        last value stays.
        """
        now = time.monotonic()
        if now - self._backlog_at < self._sweep_interval:
            return
        self._backlog_at = now
        with contextlib.suppress(*OUTAGES):
            OUTBOX_BACKLOG.set(await store.backlog(self._pool))
