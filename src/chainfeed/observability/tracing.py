"""OpenTelemetry set-up: a real TracerProvider always (so trace ids exist and travel in stream
entries), exporting over OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Context crosses the stream in the entry's ``traceparent``/``tracestate`` fields:
:func:`inject_context` writes them on XADD, :func:`extract_context` reads them on consume.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

__all__ = ["configure_tracing", "extract_context", "inject_context", "tracer"]

tracer = trace.get_tracer("chainfeed")
_configured = False


def configure_tracing(*, service_name: str = "chainfeed") -> TracerProvider | None:
    """Install the SDK provider once per process; returns it (None when already installed)."""
    global _configured  # noqa: PLW0603 - process-wide, like OpenTelemetry's own global provider
    if _configured:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    trace.set_tracer_provider(provider)
    _configured = True
    return provider


def inject_context(fields: dict[str, str]) -> dict[str, str]:
    """Add ``traceparent`` (and ``tracestate``) of the current span to stream-entry ``fields``."""
    propagate.inject(fields)
    return fields


def extract_context(fields: Mapping[str, str]) -> otel_context.Context:
    """The producer's context carried in a stream entry (empty context when absent)."""
    return propagate.extract(dict(fields))
