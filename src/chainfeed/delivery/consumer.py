"""Delivery: ``feed:stream`` -> the consumer group -> each user's channel -> the hub -> the tabs.

Each process is one consumer of the group. Handling an entry means: read it (a malformed one is
poison), make sure it is a feed item in PostgreSQL (a hand XADD is not yet), encode its frame
once, and PUBLISH it on the user's channel, so every instance holding a tab of the user pushes
it. A batch is acknowledged only after its publishes went out. A failed entry stays pending,
is claimed again after CHAINFEED_CLAIM_IDLE_MS, and after CHAINFEED_MAX_DELIVERIES deliveries
moves to the dead-letter stream (:mod:`chainfeed.domain.retry` decides).

One maintenance worker per process refreshes the stream gauges, trims the stream (never past an
unacknowledged entry), beats this instance's heartbeat and removes consumers that left.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg
import structlog
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind
from redis.exceptions import RedisError, ResponseError

from chainfeed.broker.pubsub import Presence
from chainfeed.broker.streams import Command, ConsumerGroup
from chainfeed.delivery.hub import Hub
from chainfeed.domain.entries import PoisonEntry, entry_millis, parse_entry
from chainfeed.domain.frames import encode_frame, encode_item, pack_push
from chainfeed.domain.retry import Verdict, after_failure, dead_letter_fields, exhausted
from chainfeed.errors import UnavailableError
from chainfeed.names import USER_CHANNEL_PREFIX, user_channel
from chainfeed.observability.metrics import (
    DEAD_LETTERS,
    REDIS_STREAM_CONSUMER_LAG,
    REDIS_STREAM_CONSUMERS,
    REDIS_STREAM_LENGTH,
    REDIS_STREAM_PENDING,
    REDIS_STREAM_RETRIES,
    STAGE_DURATION,
)
from chainfeed.observability.tracing import extract_context, format_traceparent, recording, tracer
from chainfeed.storage.entries import persist_entry
from chainfeed.storage.feed import feed_committed_late, feed_published_since, feed_resume, feed_since
from chainfeed.storage.pool import POSTGRES_DOWN

if TYPE_CHECKING:
    from chainfeed.config import Settings
    from chainfeed.runtime import Runtime

__all__ = ["Consumer", "maintain", "replay_late", "replay_page", "replay_recent", "replay_resume", "start"]

log = structlog.get_logger(__name__)

#: ``(channel, feed item id, entry ms, frame, the entry's CONSUMER span)``: ready to publish.
Prepared = tuple[str, int, int, str, SpanContext]
#: Batch of ``(entry id, fields, deliveries so far including this one)``.
Batch = Sequence[tuple[str, dict[str, str], int]]
#: How often the maintenance worker runs; stale consumers are looked for every tenth run.
MAINTENANCE_SECONDS = 5.0
#: A consumer idle this long with nothing pending has left the group for good.
STALE_CONSUMER_MS = 10 * 60 * 1000
#: Feed items per replay query.
REPLAY_PAGE = 500
_CONSUME_STAGE = STAGE_DURATION.labels("consume")
_FANOUT_STAGE = STAGE_DURATION.labels("fanout")
_REMEMBERED_ERRORS = 1000
#: Outages a worker waits out (it logs, pauses and carries on).
_OUTAGES: tuple[type[BaseException], ...] = (RedisError, asyncpg.PostgresError, *POSTGRES_DOWN)


class Consumer:
    """This process's consumer: reads new entries, claims idle ones, hands each batch off."""

    def __init__(self, group: ConsumerGroup, *, pool: asyncpg.Pool, settings: Settings) -> None:
        self.group = group
        self._pool = pool
        self._settings = settings
        self._last_poll = time.monotonic()
        # The last error of entries left for retry, so a dead letter written by this process
        # after an attempt that did not fail itself (all deliveries spent) still says why.
        self._errors: OrderedDict[str, str] = OrderedDict()

    async def run(self) -> None:
        """Worker: create the group, then XREADGROUP -> handle -> XACK, for ever."""
        try:
            await self._consume()
        finally:
            await self.group.wire.close()

    async def _consume(self) -> None:
        settings = self._settings
        await self._retrying(self._initialize)
        outgoing: list[Command] = []
        while True:
            try:
                # The last batch's PUBLISHes and XACK go out in the same write as the next read:
                # one wake-up of Redis (and of this process) per batch instead of two.
                sending, outgoing = outgoing, []
                entries = await self.group.read(
                    count=settings.stream_batch, block_ms=settings.stream_block_ms, after=sending
                )
                self._last_poll = time.monotonic()
                if entries:
                    outgoing = await self.handle(
                        [(entry_id, fields, 1) for entry_id, fields in entries], defer=True
                    )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    await self._pause("stream read failed", exc)
                    continue
                log.warning("consumer group vanished; creating it again", group=self.group.group)
                await self._retrying(self._initialize)
            except _OUTAGES as exc:
                await self._pause("stream read failed", exc)
            except Exception:
                log.exception("stream consumer failed; carrying on")
                await asyncio.sleep(1.0)

    async def run_claims(self) -> None:
        """Worker: take over entries idle past the claim time (their consumer failed or died)."""
        settings = self._settings
        interval = min(max(settings.claim_idle_ms / 2000, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            try:
                after: str | None = None
                while after != "":
                    claimed, after = await self.group.claim(
                        min_idle_ms=settings.claim_idle_ms, count=settings.stream_batch, after=after
                    )
                    if claimed:
                        REDIS_STREAM_RETRIES.inc(len(claimed))
                        await self.handle([(c.entry_id, c.fields, c.deliveries) for c in claimed])
            except _OUTAGES as exc:
                await self._pause("stream claim failed", exc)
            except Exception:
                log.exception("stream claimer failed; carrying on")
                await asyncio.sleep(1.0)

    async def handle(self, batch: Batch, *, defer: bool = False) -> list[Command]:
        """Persist where needed, publish, then acknowledge; failed entries stay pending or dead-letter.

        With ``defer`` (and no spans to record) the PUBLISH and XACK commands are returned for the
        caller to send with its next command, instead of being sent here.
        """
        started = time.perf_counter()
        acks: list[str] = []
        messages: list[Prepared] = []
        letters: list[tuple[str, dict[str, str]]] = []
        max_deliveries = self._settings.max_deliveries
        for entry_id, fields, deliveries in batch:
            if exhausted(deliveries, max_deliveries):
                error = self._errors.pop(entry_id, "attempts used up without an outcome")
                letters.append(_letter(entry_id, fields, deliveries, error))
                continue
            try:
                messages.append(await self._prepare(entry_id, fields))
            except Exception as exc:  # any failure is this entry's, retried or dead-lettered
                error = str(exc) if isinstance(exc, PoisonEntry) else f"{type(exc).__name__}: {exc}"
                verdict = after_failure(deliveries, max_deliveries)
                log.warning(
                    "stream entry failed",
                    entry_id=entry_id,
                    deliveries=deliveries,
                    error=error,
                    verdict=verdict.value,
                )
                if verdict is Verdict.DEAD_LETTER:
                    letters.append(_letter(entry_id, fields, deliveries, error))
                else:
                    self._remember(entry_id, error)
                continue
            acks.append(entry_id)
        _CONSUME_STAGE.observe(time.perf_counter() - started)
        deferred: list[Command] = []
        if messages or acks:
            # One round trip: the publishes, then XACK of the batch behind them.
            started = time.perf_counter()
            if defer and not recording():
                deferred = self.group.publish_and_ack_commands(_untraced(messages), acks)
            else:
                await _fan_out(self.group, messages, acks)
            _FANOUT_STAGE.observe(time.perf_counter() - started)
        if letters:
            await self.group.dead_letter(self._settings.dead_letter_stream, letters)
            DEAD_LETTERS.inc(len(letters))
            for entry_id, fields in letters:
                self._errors.pop(entry_id, None)
                log.error(
                    "stream entry dead-lettered",
                    entry_id=entry_id,
                    deliveries=fields["deliveries"],
                    error=fields["error"],
                )
        return deferred

    async def check(self) -> None:
        """Readiness: the consumer polled the stream recently."""
        allowed = 3 * self._settings.stream_block_ms / 1000 + 5
        if time.monotonic() - self._last_poll > allowed:
            raise UnavailableError("consumer", "has not polled the stream recently")

    async def _prepare(self, entry_id: str, fields: dict[str, str]) -> Prepared:
        """What delivers the entry (its frame, encoded once); raises when it cannot be delivered.

        With spans going nowhere (no exporter) no CONSUMER span is made: on the hot path it cost
        more than the rest of the entry's handling.
        """
        if not recording():
            return await self._build(entry_id, fields, trace.INVALID_SPAN_CONTEXT)
        group = self.group
        with tracer.start_as_current_span(
            f"deliver {group.stream}",
            context=extract_context(fields),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "redis",
                "messaging.destination.name": group.stream,
                "messaging.consumer.group.name": group.group,
                "messaging.operation.type": "process",
                "messaging.message.id": entry_id,
            },
        ) as span:
            return await self._build(entry_id, fields, span.get_span_context())

    async def _build(self, entry_id: str, fields: dict[str, str], context: SpanContext) -> Prepared:
        item = parse_entry(entry_id, fields)
        entry_ms = entry_millis(entry_id)
        if item.feed_item_id is not None:
            item_id = item.feed_item_id
            created_at = item.created_at or datetime.fromtimestamp(entry_ms / 1000, UTC).isoformat()
        else:
            stored = await persist_entry(
                self._pool,
                entry_id=entry_id,
                user_id=item.user_id,
                type_=item.type,
                payload_json=item.payload_json,
            )
            if stored is None:
                raise PoisonEntry(f"user {item.user_id} does not exist")
            item_id, created_at = stored[0], stored[1].isoformat()
        frame = encode_frame(
            item_id=item_id,
            user_id=item.user_id,
            created_at=created_at,
            type_=item.type,
            payload_json=item.payload_json,
        )
        return user_channel(item.user_id), item_id, entry_ms, frame, context

    async def _initialize(self) -> None:
        created = await self.group.ensure()
        log.info(
            "consumer group initialized",
            stream=self.group.stream,
            group=self.group.group,
            consumer=self.group.consumer,
            created=created,
        )

    async def _retrying(self, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await step()
            except _OUTAGES as exc:
                await self._pause("stream set-up failed", exc)
            else:
                return

    async def _pause(self, event: str, exc: BaseException) -> None:
        log.warning(event, error=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(1.0)

    def _remember(self, entry_id: str, error: str) -> None:
        self._errors[entry_id] = error
        self._errors.move_to_end(entry_id)
        while len(self._errors) > _REMEMBERED_ERRORS:
            self._errors.popitem(last=False)


async def _fan_out(group: ConsumerGroup, messages: Sequence[Prepared], acks: Sequence[str]) -> None:
    """PUBLISH the batch, then XACK ``acks``, in one round trip and one PRODUCER span.

    Each push carries the trace context it continues.

    The span is a child of the first entry's CONSUMER span and links every entry's. A push from
    the same trace continues this span; any other continues its own entry's CONSUMER span. When
    spans go nowhere (no exporter), pushes carry no trace context and the hubs start no span.
    """
    if not recording() or not messages:
        await group.publish_and_ack(_untraced(messages), acks)
        return
    first = messages[0][4]
    with tracer.start_as_current_span(
        f"publish {USER_CHANNEL_PREFIX}{{user_id}}",
        context=trace.set_span_in_context(trace.NonRecordingSpan(first)),
        kind=SpanKind.PRODUCER,
        links=[Link(message[4]) for message in messages[1:]],
        attributes={
            "messaging.system": "redis",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.template": f"{USER_CHANNEL_PREFIX}{{user_id}}",
            "messaging.batch.message_count": len(messages),
        },
    ) as span:
        own = span.get_span_context()
        own_parent = format_traceparent(own)
        await group.publish_and_ack(
            [
                (
                    channel,
                    pack_push(
                        item_id,
                        entry_ms,
                        frame,
                        own_parent if context.trace_id == own.trace_id else format_traceparent(context),
                    ),
                )
                for channel, item_id, entry_ms, frame, context in messages
            ],
            acks,
        )


def _untraced(messages: Sequence[Prepared]) -> list[tuple[str, str]]:
    """``(channel, push)`` pairs carrying no trace context (spans go nowhere)."""
    return [
        (channel, pack_push(item_id, entry_ms, frame)) for channel, item_id, entry_ms, frame, _ in messages
    ]


def _letter(entry_id: str, fields: dict[str, str], deliveries: int, error: str) -> tuple[str, dict[str, str]]:
    return entry_id, dead_letter_fields(fields, original_id=entry_id, deliveries=deliveries, error=error)


async def maintain(group: ConsumerGroup, presence: Presence, *, settings: Settings) -> None:
    """Worker: heartbeat, stream gauges and trimming every few seconds; stale consumers now and then."""
    runs = 0
    while True:
        try:
            await presence.heartbeat()
            stats = await group.stats()
            REDIS_STREAM_LENGTH.labels(group.stream).set(stats.length)
            REDIS_STREAM_PENDING.labels(group.group).set(stats.pending)
            REDIS_STREAM_CONSUMER_LAG.set(stats.lag_seconds)
            REDIS_STREAM_CONSUMERS.labels(group.group).set(
                await _active_consumers(group, within_ms=settings.claim_idle_ms)
            )
            trimmed = await group.trim(settings.stream_maxlen)
            if trimmed:
                log.debug("stream trimmed", stream=group.stream, removed=trimmed)
            if runs % 10 == 0:
                removed = await group.remove_stale_consumers(min_idle_ms=STALE_CONSUMER_MS)
                if removed:
                    log.info("stale consumers removed", group=group.group, consumers=removed)
        except _OUTAGES as exc:
            log.warning("stream maintenance failed", error=f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("stream maintenance failed")
        runs += 1
        await asyncio.sleep(MAINTENANCE_SECONDS)


async def _active_consumers(group: ConsumerGroup, *, within_ms: int) -> int:
    """Consumers of the group that read within ``within_ms`` (XINFO CONSUMERS), for the no-consumer alert."""
    consumers = await group.redis.xinfo_consumers(group.stream, group.group)
    return sum(1 for consumer in consumers if int(consumer.get("idle", within_ms)) < within_ms)


async def replay_page(pool: asyncpg.Pool, user_id: int, after: int) -> list[tuple[int, str]]:
    """The user's next feed items after ``after``, oldest first, encoded as frames (for resume)."""
    items = await feed_since(pool, user_id, after, limit=REPLAY_PAGE)
    return [(item["id"], encode_item(item)) for item in items]


async def replay_late(pool: asyncpg.Pool, user_id: int, since: int) -> list[tuple[int, str]]:
    """Items with ids below ``since`` that were committed (and published) after it, as frames."""
    items = await feed_committed_late(pool, user_id, since)
    return [(item["id"], encode_item(item)) for item in items]


async def replay_resume(
    pool: asyncpg.Pool, user_id: int, since: int
) -> tuple[list[tuple[int, str]], list[tuple[int, str]], bool]:
    """:func:`replay_late` and the first :func:`replay_page` in one query, as frames; and whether
    that page is the last (shorter than a page: asking for the next would find nothing)."""
    late, page = await feed_resume(pool, user_id, since, limit=REPLAY_PAGE)
    frames = [(item["id"], encode_item(item)) for item in page]
    return [(item["id"], encode_item(item)) for item in late], frames, len(page) < REPLAY_PAGE


async def replay_recent(pool: asyncpg.Pool, user_id: int, opened_at: float) -> list[tuple[int, str]]:
    """Items published since ``opened_at`` (unix seconds, less a second for clock skew), as frames."""
    at = datetime.fromtimestamp(opened_at - 1.0, tz=UTC)
    items = await feed_published_since(pool, user_id, at)
    return [(item["id"], encode_item(item)) for item in items]


async def start(runtime: Runtime) -> None:
    """Start the hub, the consumer, the claimer and maintenance on ``runtime``; register readiness."""
    settings = runtime.settings
    group = ConsumerGroup(
        runtime.redis, stream=settings.stream, group=settings.consumer_group, consumer=settings.consumer_name
    )
    presence = Presence(
        runtime.redis,
        instance_id=f"{settings.consumer_name}-{secrets.token_hex(3)}",
        max_per_user=settings.ws_max_per_user,
        ttl_ms=(settings.jwt_ttl_seconds + 3600) * 1000,
    )
    hub = Hub(
        runtime.redis, presence=presence, max_total=settings.ws_max_total, send_queue=settings.ws_send_queue
    )
    runtime.hub = hub
    consumer = Consumer(group, pool=runtime.pool, settings=settings)
    runtime.start_worker("hub-subscriber", hub.run())
    runtime.start_worker("stream-consumer", consumer.run())
    runtime.start_worker("stream-claimer", consumer.run_claims())
    runtime.start_worker("stream-maintenance", maintain(group, presence, settings=settings))
    runtime.checks["consumer"] = consumer.check
