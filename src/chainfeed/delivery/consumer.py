"""The stream consumer: ``feed:stream`` -> the consumer group -> a frame per entry -> the users' channels.

Each process is one consumer of the group. Handling an entry means: read it (a malformed one is
poison), make sure it is a feed item in PostgreSQL (a hand XADD is not yet), encode its frame
once, and PUBLISH it on the user's channel, so every instance holding a tab of the user pushes
it. A batch is acknowledged only after its publishes went out. A failed entry stays pending,
is claimed again after CHAINFEED_CLAIM_IDLE_MS, and after CHAINFEED_MAX_DELIVERIES deliveries
moves to the dead-letter stream (:mod:`chainfeed.domain.retry` decides).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanContext, SpanKind

from chainfeed.broker.streams import Command, ConsumerGroup
from chainfeed.config import Settings
from chainfeed.delivery.publishing import Prepared, publish_and_ack, untraced
from chainfeed.domain.entries import entry_millis, parse_entry
from chainfeed.domain.frames import encode_frame
from chainfeed.domain.retry import Verdict, after_failure, dead_letter_fields, exhausted
from chainfeed.errors import PoisonEntry, UnavailableError
from chainfeed.names import user_channel
from chainfeed.observability.metrics import DEAD_LETTERS, REDIS_STREAM_RETRIES, STAGE_DURATION
from chainfeed.observability.tracing import extract_context, recording, tracer
from chainfeed.storage.entries import persist_entry
from chainfeed.storage.pool import Pool
from chainfeed.workers import supervise

__all__ = ["Consumer", "Delivery"]

log = structlog.get_logger(__name__)

_CONSUME_STAGE = STAGE_DURATION.labels("consume")
_FANOUT_STAGE = STAGE_DURATION.labels("fanout")
_REMEMBERED_ERRORS = 1000


class Delivery(NamedTuple):
    """An entry to handle: ``deliveries`` counts this one (1 when read, more when claimed)."""

    entry_id: str
    fields: dict[str, str]
    deliveries: int


class Consumer:
    """This process's consumer: reads new entries, claims idle ones, hands each batch off."""

    def __init__(self, group: ConsumerGroup, *, pool: Pool, settings: Settings) -> None:
        self.group = group
        self._pool = pool
        self._settings = settings
        self._last_poll = time.monotonic()
        self._initialized = False
        #: The last batch's PUBLISHes and XACK, sent in the same write as the next read.
        self._outgoing: list[Command] = []
        # The last error of entries left for retry, so a dead letter written by this process
        # after an attempt that did not fail itself (all deliveries spent) still says why.
        self._errors: OrderedDict[str, str] = OrderedDict()

    async def run(self) -> None:
        """Worker: create the group, then XREADGROUP -> handle -> XACK, for ever."""
        try:
            await supervise("stream-consumer", self.consume_once)
        finally:
            await self.group.wire.close()

    async def run_claims(self) -> None:
        """Worker: take over entries idle past the claim time (their consumer failed or died)."""
        interval = min(max(self._settings.claim_idle_ms / 2000, 0.05), 5.0)
        await supervise("stream-claimer", self.claim_once, idle=lambda: asyncio.sleep(interval))

    async def consume_once(self) -> None:
        """One read of new entries (waiting up to the block time) and their handling."""
        settings = self._settings
        if not self._initialized:
            created = await self.group.ensure()
            self._initialized = True
            log.info("consumer group initialized", stream=self.group.stream, group=self.group.group,
                     consumer=self.group.consumer, created=created)  # fmt: skip
        # One wake-up of Redis (and of this process) per batch instead of two. Should the write
        # fail, those entries stay pending and are claimed again: nothing is lost.
        sending, self._outgoing = self._outgoing, []
        entries = await self.group.read(
            count=settings.stream_batch, block_ms=settings.stream_block_ms, after=sending
        )
        self._last_poll = time.monotonic()
        if entries:
            self._outgoing = await self.handle(
                [Delivery(entry_id, fields, 1) for entry_id, fields in entries], defer=True
            )

    async def claim_once(self) -> None:
        """Claim and handle every entry idle past the claim time, a batch at a time."""
        settings = self._settings
        after: str | None = None
        while after != "":
            claimed, after = await self.group.claim(
                min_idle_ms=settings.claim_idle_ms, count=settings.stream_batch, after=after
            )
            if claimed:
                REDIS_STREAM_RETRIES.inc(len(claimed))
                await self.handle([Delivery(c.entry_id, c.fields, c.deliveries) for c in claimed])

    async def handle(self, batch: Sequence[Delivery], *, defer: bool = False) -> list[Command]:
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
                log.warning("stream entry failed", entry_id=entry_id, deliveries=deliveries, error=error,
                            verdict=verdict.value)  # fmt: skip
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
                deferred = self.group.publish_and_ack_commands(untraced(messages), acks)
            else:
                await publish_and_ack(self.group, messages, acks)
            _FANOUT_STAGE.observe(time.perf_counter() - started)
        if letters:
            await self._dead_letter(letters)
        return deferred

    async def check(self) -> None:
        """Readiness: the consumer polled the stream recently."""
        allowed = 3 * self._settings.stream_block_ms / 1000 + 5
        if time.monotonic() - self._last_poll > allowed:
            raise UnavailableError("consumer", "has not polled the stream recently")

    async def _dead_letter(self, letters: list[tuple[str, dict[str, str]]]) -> None:
        await self.group.dead_letter(self._settings.dead_letter_stream, letters)
        DEAD_LETTERS.inc(len(letters))
        for entry_id, fields in letters:
            self._errors.pop(entry_id, None)
            log.error("stream entry dead-lettered", entry_id=entry_id, deliveries=fields["deliveries"],
                      error=fields["error"])  # fmt: skip

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
        seq: int | None
        if item.feed_item_id is not None:
            # Our relay's entries carry their number. One without (an older relay's, during an
            # upgrade, or another producer's) is pushed as it is, outside the feed order: a
            # query per entry to number it would put PostgreSQL on the hot path.
            item_id, seq = item.feed_item_id, item.seq
            created_at = item.created_at or datetime.fromtimestamp(entry_ms / 1000, UTC).isoformat()
        else:
            stored = await persist_entry(self._pool, entry_id=entry_id, user_id=item.user_id, type_=item.type,
                                         payload_json=item.payload_json)  # fmt: skip
            if stored is None:
                raise PoisonEntry(f"user {item.user_id} does not exist")
            item_id, seq, created_at = stored.item_id, stored.seq, stored.created_at.isoformat()
        frame = encode_frame(item_id=item_id, seq=seq, user_id=item.user_id, created_at=created_at,
                             type_=item.type, payload_json=item.payload_json,
                             ref=item.ref if item.persisted else None)  # fmt: skip
        return Prepared(user_channel(item.user_id), item_id, seq, entry_ms, frame, context)

    def _remember(self, entry_id: str, error: str) -> None:
        self._errors[entry_id] = error
        self._errors.move_to_end(entry_id)
        while len(self._errors) > _REMEMBERED_ERRORS:
            self._errors.popitem(last=False)


def _letter(entry_id: str, fields: dict[str, str], deliveries: int, error: str) -> tuple[str, dict[str, str]]:
    return entry_id, dead_letter_fields(fields, original_id=entry_id, deliveries=deliveries, error=error)
