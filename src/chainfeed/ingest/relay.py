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
from typing import TYPE_CHECKING

import asyncpg
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from chainfeed.broker.publisher import RedisProbe, StreamPublisher
from chainfeed.observability.metrics import OUTBOX_BACKLOG, STAGE_DURATION
from chainfeed.storage import outbox as store
from chainfeed.storage.pool import POSTGRES_DOWN

if TYPE_CHECKING:
    from chainfeed.runtime import Runtime

__all__ = ["OutboxRelay", "start"]

log = structlog.get_logger(__name__)

#: What an outage of either server looks like to the relay: wait and retry, never give up.
_OUTAGE: tuple[type[BaseException], ...] = (*POSTGRES_DOWN, RedisError, asyncpg.PostgresError)


class OutboxRelay:
    """Publishes unpublished feed items to the stream; one per process, safe with many processes."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
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
        self._failing = False
        self._backlog_at = 0.0
        #: Answers "can a webhook's feed items reach the stream right now?" for ingest.
        self.probe = RedisProbe(redis)

    def wake(self) -> None:
        """New items were committed: publish now instead of at the next sweep."""
        self._wake.set()

    async def run(self) -> None:
        """Publish until cancelled: on every wake-up and at least every ``sweep_interval`` s."""
        while True:
            self._wake.clear()
            await self._pass()
            try:
                async with asyncio.timeout(self._sweep_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

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
        """One drain, turning outages into one warning (and one recovery line), never an exit."""
        try:
            published = await self.drain()
        except _OUTAGE as exc:
            if not self._failing:
                log.warning("outbox relay paused: cannot publish", error=repr(exc))
            self._failing = True
        except Exception:
            log.exception("outbox relay pass failed")
            self._failing = True
        else:
            if self._failing:
                log.info("outbox relay resumed", published=published)
                self._failing = False
        await self._measure_backlog()

    async def _measure_backlog(self) -> None:
        """Refresh the backlog gauge about once per sweep interval (a cheap partial-index count).

        It matters most during an outage of Redis, when it grows; with PostgreSQL down too, the
        last value stays.
        """
        now = time.monotonic()
        if now - self._backlog_at < self._sweep_interval:
            return
        self._backlog_at = now
        with contextlib.suppress(*_OUTAGE):
            OUTBOX_BACKLOG.set(await store.backlog(self._pool))


async def _nothing() -> None:
    """Stands in for the XADDs when a batch holds only ids of deleted items."""


async def start(runtime: Runtime) -> None:
    """Create this process's relay on ``runtime`` and run it for the life of the process."""
    relay = OutboxRelay(pool=runtime.pool, redis=runtime.redis, stream=runtime.settings.stream)
    runtime.relay = relay
    runtime.start_worker("outbox-relay", relay.run())
