"""The producing side of the Redis stream: pipelined XADD with a PRODUCER span per entry, and a probe.

Entries are appended without MAXLEN: trimming belongs to the delivery side, which knows what
the consumer group has not yet acknowledged (SPEC: trimming never removes such entries).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.asyncio import Redis

from chainfeed.domain.outbox import OutboxItem, stream_fields
from chainfeed.observability.tracing import extract_context, inject_context, tracer

__all__ = ["RedisProbe", "StreamPublisher"]


class StreamPublisher:
    """Appends outbox items to ``stream`` in order, in one round trip per call."""

    def __init__(self, redis: Redis, stream: str, *, timeout: float = 5.0) -> None:
        self._redis = redis
        self._stream = stream
        self._timeout = timeout

    async def publish(self, items: Sequence[OutboxItem]) -> list[str]:
        """XADD every item (one pipeline, not a MULTI); returns the entry ids in the same order.

        Each entry gets a PRODUCER span, child of the ingest that created the item, whose context
        travels in the entry's ``traceparent``/``tracestate``. Raises on any failure: the caller
        then leaves the items unpublished, and some of them may already be on the stream (the
        delivery side drops such repeats by ``feed_item_id``).
        """
        spans = []
        pipe = self._redis.pipeline(transaction=False)
        for item in items:
            span = tracer.start_span(
                f"publish {self._stream}",
                context=extract_context(item.trace_carrier) if item.traceparent else None,
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "redis",
                    "messaging.destination.name": self._stream,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "xadd",
                    "chainfeed.feed_item_id": item.id,
                },
            )
            spans.append(span)
            with trace.use_span(span, end_on_exit=False):
                fields = inject_context(stream_fields(item))
            pipe.xadd(self._stream, fields)  # type: ignore[arg-type]  # dict[str, str] is a FieldT mapping
        try:
            async with asyncio.timeout(self._timeout):
                entry_ids: list[str] = await pipe.execute()
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.end()
            raise
        for span, entry_id in zip(spans, entry_ids, strict=True):
            span.set_attribute("messaging.message.id", entry_id)
            span.end()
        return entry_ids


class RedisProbe:
    """Is Redis answering right now? One PING in flight at a time, shared by concurrent callers.

    The webhook asks before writing anything, so an outage answers 503 (Alchemy retries) rather
    than piling up feed items that cannot reach anyone. Sharing the in-flight PING keeps the cost
    at about one round trip per burst of webhooks, however many arrive together.
    """

    def __init__(self, redis: Redis, *, timeout: float = 1.0) -> None:
        self._redis = redis
        self._timeout = timeout
        self._inflight: asyncio.Future[bool] | None = None

    async def available(self) -> bool:
        """True when Redis answered a PING started no earlier than one round trip ago."""
        if self._inflight is None:
            future = asyncio.ensure_future(self._ping())
            self._inflight = future
            future.add_done_callback(self._forget)
        return await asyncio.shield(self._inflight)

    def _forget(self, future: asyncio.Future[bool]) -> None:
        if self._inflight is future:
            self._inflight = None

    async def _ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.ping()
        except Exception:  # any failure to answer means "not available"
            return False
        return True
