"""Ingest use case: one Alchemy webhook -> verified, parsed, stored with its feed items -> relay woken.

Order of checks, cheapest and least trusting first:

1. signature over the raw bytes (401 ``bad_signature``), before any parsing;
2. shape (400 ``malformed``, naming the JSON path) only for a body that is not a delivery at all;
   an activity the parser cannot use is quarantined and the rest stored (200);
3. a capacity-limit notice (``event.error``, no activity) is accepted, logged, counted, stored nowhere;
4. Redis must answer a PING (503 ``unavailable``) *before* anything is written: items committed
   during an outage could not reach anyone, and Alchemy will retry the delivery anyway;
5. one idempotent PostgreSQL transaction (503 if PostgreSQL is unreachable or has not answered
   within ``STORE_TIMEOUT``, nothing half-written);
6. wake the outbox relay, which publishes to the stream after the commit.

Alchemy gives up on an answer after 5 s: the Redis probe (1 s) and the store (``STORE_TIMEOUT``)
answer 503 well before that, so Alchemy retries instead of counting a timeout.

A Redis outage that starts between steps 4 and 6 loses nothing: the items are committed with
``feed_outbox`` and the relay publishes them once Redis is back.

Every request counts once in ``webhook_requests_total{outcome}``; the body's size limit (413
``too_large``) is enforced by the web layer, which reports it through :func:`reject_too_large`.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, replace

import structlog
from opentelemetry.trace import SpanKind, Status, StatusCode

from chainfeed.broker.probe import RedisProbe
from chainfeed.domain.alchemy import parse_webhook
from chainfeed.domain.signature import signature_valid
from chainfeed.domain.transfers import QUARANTINE_REASONS, Quarantined, Webhook, metric_category
from chainfeed.errors import AuthError, UnavailableError, ValidationError
from chainfeed.ingest.relay import OutboxRelay
from chainfeed.observability.metrics import (
    ACTIVITIES_INGESTED,
    ACTIVITIES_QUARANTINED,
    FEED_ITEMS_CREATED,
    FEED_ITEMS_SUPPRESSED,
    STAGE_DURATION,
    WEBHOOK_REQUESTS,
)
from chainfeed.observability.tracing import inject_context, tracer
from chainfeed.storage.ingest import DEFAULT_ITEMS_PER_MINUTE, StoredWebhook, store_webhook
from chainfeed.storage.pool import POSTGRES_DOWN, InputRefused, Pool

__all__ = ["STORE_TIMEOUT", "IngestResult", "ingest_webhook", "reject_too_large"]

log = structlog.get_logger(__name__)

# Every reason is exported at 0 from start-up, so an alert's increase() sees the first one.
for _reason in QUARANTINE_REASONS:
    ACTIVITIES_QUARANTINED.labels(reason=_reason)

#: Seconds the database write may take (pool wait included) before the delivery is answered 503.
STORE_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The webhook's answer: activities received, feed items created, activities quarantined."""

    activities: int
    new_feed_items: int
    quarantined: int = 0

    def as_json(self) -> dict[str, int]:
        """``{"activities": n, "new_feed_items": m}`` (SPEC), with ``quarantined`` when any were."""
        body = {"activities": self.activities, "new_feed_items": self.new_feed_items}
        if self.quarantined:
            body["quarantined"] = self.quarantined
        return body


def reject_too_large(size: int | None, limit: int) -> None:
    """Count and log a body refused for its size (the web layer answers 413)."""
    WEBHOOK_REQUESTS.labels(outcome="too_large").inc()
    log.warning("webhook rejected", outcome="too_large", content_length=size, limit=limit)


async def ingest_webhook(
    body: bytes,
    signature: str | None,
    *,
    signing_keys: tuple[str, ...],
    pool: Pool,
    relay: OutboxRelay,
    probe: RedisProbe,
    items_per_minute: int = DEFAULT_ITEMS_PER_MINUTE,
) -> IngestResult:
    """Verify, parse and store one delivery; raises AuthError, ValidationError or UnavailableError."""
    started = time.perf_counter()
    with contextlib.ExitStack() as bound:
        with tracer.start_as_current_span("ingest webhook", kind=SpanKind.INTERNAL) as span:
            if not signature_valid(body, signature, signing_keys):
                _reject("bad_signature", size=len(body), signature_present=bool(signature))
                raise AuthError(
                    "missing X-Alchemy-Signature" if not signature else "invalid X-Alchemy-Signature"
                )
            try:
                webhook = parse_webhook(body)
            except ValidationError as exc:
                _reject("malformed", reason=str(exc), size=len(body))
                raise
            # Every line about this delivery from here on names it (structlog contextvars).
            bound.enter_context(structlog.contextvars.bound_contextvars(event_id=webhook.event_id))
            span.set_attribute("alchemy.event_id", webhook.event_id)
            span.set_attribute("alchemy.activity_count", webhook.activity_count)
            if webhook.notice is not None and not webhook.transfers and not webhook.quarantined:
                WEBHOOK_REQUESTS.labels(outcome="accepted").inc()
                log.warning("webhook notice", notice=webhook.notice)
                return IngestResult(activities=0, new_feed_items=0)
            if not await probe.available():
                _reject("unavailable", part="redis")
                span.set_status(Status(StatusCode.ERROR, "redis unavailable"))
                raise UnavailableError("redis")
            webhook, stored = await _store(pool, webhook, items_per_minute)
        if stored.new_feed_items:
            relay.wake()
        _accepted(webhook, stored, elapsed=time.perf_counter() - started)
        return IngestResult(activities=webhook.activity_count, new_feed_items=stored.new_feed_items,
                            quarantined=len(webhook.quarantined))  # fmt: skip


async def _store(pool: Pool, webhook: Webhook, items_per_minute: int) -> tuple[Webhook, StoredWebhook]:
    """Store the delivery; if PostgreSQL refuses a value the parser let through, store it again
    with every activity quarantined (``refused_by_database``): never a 400 for content."""
    try:
        return webhook, await _write(pool, webhook, items_per_minute)
    except InputRefused as exc:
        log.warning("webhook refused by the database, quarantined whole", error=str(exc))
        quarantined = tuple(
            Quarantined(q.position, "refused_by_database", f"PostgreSQL refused it: {exc}", q.raw)
            for q in _everything(webhook)
        )
        webhook = replace(webhook, transfers=(), quarantined=quarantined)
        return webhook, await _write(pool, webhook, items_per_minute)


def _everything(webhook: Webhook) -> list[Quarantined]:
    """Every activity of the delivery as a quarantine entry (its position, its raw text)."""
    stored = [Quarantined(t.position, "", "", bytes(t.raw).decode()) for t in webhook.transfers]
    return sorted([*webhook.quarantined, *stored], key=lambda q: q.position)


async def _write(pool: Pool, webhook: Webhook, items_per_minute: int) -> StoredWebhook:
    """The database write, in a CLIENT span whose context the new feed items keep for the relay."""
    started = time.perf_counter()
    with tracer.start_as_current_span(
        "ingest store",
        kind=SpanKind.CLIENT,
        attributes={
            "db.system.name": "postgresql",
            "db.operation.name": "INSERT",
            "db.collection.name": "transactions",
        },
    ) as span:
        context = inject_context({})
        try:
            trace = {"traceparent": context.get("traceparent"), "tracestate": context.get("tracestate")}
            stored = await store_webhook(
                pool, webhook, **trace, budget=STORE_TIMEOUT, items_per_minute=items_per_minute
            )
        except POSTGRES_DOWN as exc:
            _reject("unavailable", part="postgres", error=repr(exc))
            span.set_status(Status(StatusCode.ERROR, "postgres unavailable"))
            raise UnavailableError("postgres") from None
    STAGE_DURATION.labels(stage="db_write").observe(time.perf_counter() - started)
    return stored


def _accepted(webhook: Webhook, stored: StoredWebhook, *, elapsed: float) -> None:
    WEBHOOK_REQUESTS.labels(outcome="accepted").inc()
    categories = Counter(metric_category(t.category) for t in webhook.transfers)
    for category, count in categories.items():
        ACTIVITIES_INGESTED.labels(category=category).inc(count)
    if stored.new_feed_items:
        FEED_ITEMS_CREATED.inc(stored.new_feed_items)
    if stored.suppressed:
        FEED_ITEMS_SUPPRESSED.inc(stored.suppressed)
        _note_suppressed(stored.suppressed)
    for reason, count in Counter(stored.quarantined).items():
        ACTIVITIES_QUARANTINED.labels(reason=reason).inc(count)
    if webhook.quarantined:
        # One line per delivery (its event id is bound): where and why, never the values.
        log.warning("activities quarantined", webhook_id=webhook.webhook_id, network=webhook.network,
                    quarantined=[{"position": q.position, "reason": q.reason, "detail": q.detail}
                                 for q in webhook.quarantined[:20]],
                    count=len(webhook.quarantined), new=len(stored.quarantined))  # fmt: skip
    STAGE_DURATION.labels(stage="ingest").observe(elapsed)
    log.info(
        "webhook ingested",
        webhook_id=webhook.webhook_id,
        network=webhook.network,
        activities=webhook.activity_count,
        new_transfers=stored.new_transfers,
        updated_transfers=stored.updated_transfers,
        new_feed_items=stored.new_feed_items,
        update_items=stored.update_items,
        quarantined=len(webhook.quarantined),
        deliveries=stored.deliveries,
        duration_ms=round(elapsed * 1000, 2),
        **({"notice": webhook.notice} if webhook.notice else {}),
    )


_suppressed_logged_at = 0.0


def _note_suppressed(count: int) -> None:
    """At most one line a minute per process: a hot contract's watcher is past the budget on
    every delivery, and a line per delivery would flood the log (the metric counts each)."""
    global _suppressed_logged_at  # noqa: PLW0603 - a process-wide rate limit for one log line
    now = time.monotonic()
    if now - _suppressed_logged_at >= 60:
        _suppressed_logged_at = now
        log.warning("feed items suppressed: a user is past the per-minute budget", items=count)


def _reject(outcome: str, **fields: object) -> None:
    WEBHOOK_REQUESTS.labels(outcome=outcome).inc()
    log.warning("webhook rejected", outcome=outcome, **fields)
