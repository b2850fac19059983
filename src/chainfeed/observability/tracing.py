"""OpenTelemetry set-up: a real TracerProvider always (so trace ids exist and travel in stream
entries and pushes), exporting over OTLP/HTTP only when an endpoint is configured.

Spans of one webhook's trace (docs/operations.md, Tracing)::

    POST /webhooks/alchemy (SERVER, Litestar's OpenTelemetry plugin)
      ingest webhook -> ingest store (CLIENT, the PostgreSQL write)
        send feed:stream (PRODUCER, the relay's XADD; context in the entry's traceparent)
          deliver feed:stream (CONSUMER, one per entry)
            publish chainfeed:user (PRODUCER, the PUBLISH of a batch; links every entry's span)
              push (CONSUMER, one per message per instance that holds tabs of the user)

Context crosses the stream in the entry's ``traceparent``/``tracestate`` fields
(:func:`inject_context` / :func:`extract_context`) and crosses PUB/SUB inside the push envelope
(:func:`format_traceparent` / :func:`context_from_traceparent`, a fixed 55-character string:
cheaper than the generic propagator on the per-message path).

Secrets never reach a span: :class:`RedactingSpanProcessor` masks tokens, bearer credentials and
signatures in every string attribute a span starts with (the SERVER span's ``url.query`` and
``http.url`` carry the query string), and the WebSocket route is not traced at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from chainfeed.observability.logging import redact

__all__ = [
    "RedactingSpanProcessor",
    "add_span_processor",
    "configure_tracing",
    "context_from_traceparent",
    "extract_context",
    "format_traceparent",
    "http_span_details",
    "inject_context",
    "push_span",
    "recording",
    "redact_span_attributes",
    "tracer",
]

tracer = trace.get_tracer("chainfeed")
_provider: TracerProvider | None = None
#: Attribute keys whose values can carry a query string, a header or a statement.
_MAY_HOLD_SECRETS = re.compile(r"url|query|target|header|statement|path|token|password|signature")
#: Whether finished spans go anywhere (an exporter or a test's processor): per-push spans only then.
_recording = False
#: Path segments that are ids or addresses (a span name must not grow with them).
_ID_SEGMENT = re.compile(r"/(?:\d+|0x[0-9a-fA-F]+)(?=/|$)")


def http_span_details(scope: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Name and route of an HTTP request's SERVER span: ``POST /webhooks/alchemy``, ids as ``{id}``.

    The OpenTelemetry middleware wraps the app outside the router, so the route template is not
    known yet; numeric and ``0x`` segments stand in for it. The query string is never part of it.
    """
    route = _ID_SEGMENT.sub("/{id}", str(scope.get("path", "")))
    return f"{scope.get('method', '')} {route}", {"http.route": route}


def redact_span_attributes(span: trace.Span, _scope: object = None) -> None:
    """Mask tokens, bearer credentials and signatures in ``span``'s string attributes so far.

    The HTTP SERVER span's hook (it runs once the request's ``http.url`` / ``url.query`` are set)
    and, through :class:`RedactingSpanProcessor`, the start of every span.
    """
    attributes = getattr(span, "attributes", None)
    if not attributes:
        return
    for key, value in list(attributes.items()):
        if isinstance(value, str) and _MAY_HOLD_SECRETS.search(key):
            masked = redact(value)
            if masked != value:
                span.set_attribute(key, masked)


class RedactingSpanProcessor(SpanProcessor):
    """Masks secrets in the string attributes a span starts with (before any exporter sees it)."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        redact_span_attributes(span)

    def on_end(self, span: ReadableSpan) -> None:
        """Nothing to do once the span is read-only."""


def configure_tracing(*, service_name: str = "chainfeed", otlp_endpoint: str | None = None) -> TracerProvider:
    """Install the SDK provider once per process (later calls return it unchanged).

    With ``otlp_endpoint`` (Settings.otlp_endpoint, from OTEL_EXPORTER_OTLP_ENDPOINT) finished
    spans are batched and sent over OTLP/HTTP to ``<endpoint>/v1/traces``; the exporter reads the
    other standard OTEL_EXPORTER_OTLP_* variables (headers, timeout) itself. Without it nothing is
    exported and spans cost only their creation.
    """
    global _provider  # noqa: PLW0603 - process-wide, like OpenTelemetry's own global provider
    if _provider is not None:
        return _provider
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(RedactingSpanProcessor())
    trace.set_tracer_provider(provider)
    _provider = provider
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415 - only when exporting
            OTLPSpanExporter,
        )

        add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces"))
        )
    return provider


def add_span_processor(processor: SpanProcessor) -> None:
    """Send finished spans to ``processor`` too (the OTLP exporter, or a test's in-memory one).

    From then on the per-push spans are recorded as well: without anything receiving spans they
    are skipped, since on the push path a span costs about ten times the dispatch itself.
    """
    global _recording  # noqa: PLW0603 - process-wide, with the provider
    configure_tracing().add_span_processor(processor)
    _recording = True


def recording() -> bool:
    """True when spans are exported (or collected): the per-push path then traces too."""
    return _recording


def inject_context(fields: dict[str, str]) -> dict[str, str]:
    """Add ``traceparent`` (and ``tracestate``) of the current span to stream-entry ``fields``."""
    propagate.inject(fields)
    return fields


def extract_context(fields: Mapping[str, str]) -> otel_context.Context:
    """The producer's context carried in a stream entry (empty context when absent)."""
    return propagate.extract(dict(fields))


def format_traceparent(span_context: SpanContext) -> str:
    """W3C ``traceparent`` of ``span_context`` (``00-<trace id>-<span id>-<flags>``)."""
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


def context_from_traceparent(traceparent: str) -> otel_context.Context | None:
    """A context whose remote parent is ``traceparent``; None when it is not a valid one."""
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def push_span(traceparent: str | None, *, item_id: int, connections: int) -> trace.Span:
    """The CONSUMER span of one push dispatched to this instance's tabs (use it with ``with``).

    One per message per instance, never per tab: its children would be the frames, which are
    written by each tab's own writer. Without a ``traceparent`` (an untraced publisher) it is the
    shared no-op span, so the untraced path costs one comparison.
    """
    if traceparent is None or not _recording:
        return trace.INVALID_SPAN
    return tracer.start_span(
        "push",
        context=context_from_traceparent(traceparent),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "redis",
            "messaging.operation.type": "process",
            "chainfeed.feed_item_id": item_id,
            "chainfeed.connections": connections,
        },
    )
