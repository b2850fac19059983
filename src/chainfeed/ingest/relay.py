"""Transactional outbox relay: every committed feed item reaches the stream, in id order.

Ingest commits feed items, and their ids in ``feed_outbox``, in the same transaction as the
transfers, then calls :meth:`OutboxRelay.wake`. The relay, in one PostgreSQL transaction per batch:

1. takes the cluster-wide outbox advisory lock (one publisher at a time keeps id order),
2. reads the oldest ``batch_size`` outbox entries and their feed items, in id order,
3. XADDs them in one pipelined round trip,
4. deletes those outbox entries, sets the items' ``published_at`` and commits.

It also sweeps every ``sweep_interval`` seconds, so items left behind by a crash, a Redis outage
or another instance are published once things recover. Delivery to the stream is **at least
once**: a crash (or lost reply) between the XADD and the COMMIT publishes those items again on the
next pass. The delivery side drops the repeats by ``feed_item_id``.

Ordering caveat: ids come from a sequence, so two ingests committing concurrently can commit
id 12 before id 11; the relay may then publish 12 first. Within everything committed, order holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from chainfeed.broker.client import Redis
from chainfeed.broker.publisher import StreamPublisher
from chainfeed.observability.metrics import OUTBOX_BACKLOG, STAGE_DURATION
from chainfeed.storage import outbox as store
from chainfeed.storage.pool import Pool
from chainfeed.workers import OUTAGES, supervise

__all__ = ["OutboxRelay"]


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
        """Publish the oldest unpublished batch; returns its size (0 when there is nothing)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await store.lock_outbox(conn, lock_timeout=self._timeout)
            items, taken = await store.unpublished(conn, limit=self._batch_size)
            if not taken:
                return 0
            started = time.perf_counter()
            # The DELETE and the XADDs go out together (they touch different servers); the COMMIT
            # waits for both, so a failed XADD still rolls the DELETE back.
            results = await asyncio.gather(
                self._publisher.publish(items) if items else _nothing(),
                store.mark_published(conn, taken),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        STAGE_DURATION.labels(stage="publish").observe(time.perf_counter() - started)
        return len(taken)

    async def _pass(self) -> None:
        """One drain; the backlog gauge is refreshed whatever happened (it matters most in an outage)."""
        self._wake.clear()
        try:
            await self.drain()
        finally:
            await self._measure_backlog()

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


async def _nothing() -> None:
    """Stands in for the XADDs when a batch holds only ids of deleted items."""
