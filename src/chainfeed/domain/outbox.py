"""An outbox entry (a committed feed item not yet on the stream) and its stream-entry fields.

The fields are the contract with the delivery side (../shared/SPEC.md, "Redis stream message"):
``user_id``, ``feed_item_id``, ``seq`` (and ``ref`` for an update) as decimal strings, ``type``,
``payload`` as the JSON text of the stored payload, ``created_at`` in ISO 8601; the publisher
adds ``traceparent``/``tracestate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["OutboxItem", "stream_fields"]


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One feed item as the relay reads it: ``payload`` is already JSON text (no re-encoding)."""

    id: int
    user_id: int
    #: The item's position in its user's feed (numbered when the relay took it).
    seq: int
    type: str
    payload: str
    created_at: datetime
    #: Trace context of the ingest that created the item (None for items made elsewhere).
    traceparent: str | None = None
    tracestate: str | None = None
    #: The item a ``transaction_updated`` item updates (None for every other type).
    ref: int | None = None

    @property
    def trace_carrier(self) -> dict[str, str]:
        """The stored context in the shape OpenTelemetry propagators read."""
        carrier = {"traceparent": self.traceparent} if self.traceparent else {}
        if self.traceparent and self.tracestate:
            carrier["tracestate"] = self.tracestate
        return carrier


def stream_fields(item: OutboxItem) -> dict[str, str]:
    """The stream entry for ``item``, without trace fields (the publisher injects its own span's)."""
    fields = {
        "user_id": str(item.user_id),
        "type": item.type,
        "payload": item.payload,
        "feed_item_id": str(item.id),
        "seq": str(item.seq),
        "created_at": item.created_at.isoformat(),
    }
    if item.ref is not None:
        fields["ref"] = str(item.ref)
    return fields
