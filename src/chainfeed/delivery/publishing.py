"""PUBLISH of a handled batch on the users' channels, with one PRODUCER span when spans are recorded.

Each push carries the trace context it continues: the span is a child of the first entry's
CONSUMER span and links every entry's. A push from the same trace continues this span; any other
continues its own entry's CONSUMER span. When spans go nowhere (no exporter), pushes carry no
trace context and the hubs start no span.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind

from chainfeed.broker.streams import ConsumerGroup
from chainfeed.domain.frames import pack_push
from chainfeed.names import USER_CHANNEL_PREFIX
from chainfeed.observability.tracing import format_traceparent, recording, tracer

__all__ = ["Prepared", "publish_and_ack", "untraced"]


class Prepared(NamedTuple):
    """A handled entry, ready to publish: its frame is encoded once, here, for every tab."""

    channel: str
    item_id: int
    #: Its place in the user's feed; None for an entry that names an item without one.
    seq: int | None
    entry_ms: int
    frame: str
    #: The entry's CONSUMER span (invalid when spans are not recorded).
    context: SpanContext


def untraced(messages: Sequence[Prepared]) -> list[tuple[str, str]]:
    """``(channel, push)`` pairs carrying no trace context (spans go nowhere)."""
    return [(m.channel, pack_push(m.item_id, m.seq, m.entry_ms, m.frame)) for m in messages]


async def publish_and_ack(group: ConsumerGroup, messages: Sequence[Prepared], acks: Sequence[str]) -> None:
    """PUBLISH the batch, then XACK ``acks``, in one round trip (and one PRODUCER span if recorded)."""
    if not recording() or not messages:
        await group.publish_and_ack(untraced(messages), acks)
        return
    with tracer.start_as_current_span(
        f"publish {USER_CHANNEL_PREFIX}{{user_id}}",
        context=trace.set_span_in_context(trace.NonRecordingSpan(messages[0].context)),
        kind=SpanKind.PRODUCER,
        links=[Link(message.context) for message in messages[1:]],
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
        pushes = [
            (
                m.channel,
                pack_push(
                    m.item_id,
                    m.seq,
                    m.entry_ms,
                    m.frame,
                    own_parent if m.context.trace_id == own.trace_id else format_traceparent(m.context),
                ),
            )
            for m in messages
        ]
        await group.publish_and_ack(pushes, acks)
