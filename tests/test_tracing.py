"""Traces: one webhook's trace runs from the HTTP request to the push on the tab's instance.

The spans are collected in memory (the app under test runs in this process), and no span
attribute anywhere may carry the token, the webhook signature or the password.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from chainfeed.config import Settings
from chainfeed.domain.frames import Push, pack_push, unpack
from chainfeed.observability.tracing import (
    add_span_processor,
    context_from_traceparent,
    format_traceparent,
    tracer,
)
from tests.conftest import AppFactory
from tests.delivery_support import client, ready, recv_frames
from tests.ingest_support import activity, address, eventually, sign, watch, webhook
from tests.observability_support import serve

_EXPORTER = InMemorySpanExporter()
_INSTALLED = False


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this process, from a clean slate (the exporter is installed once)."""
    global _INSTALLED  # noqa: PLW0603 - one processor for the whole session
    if not _INSTALLED:
        add_span_processor(SimpleSpanProcessor(_EXPORTER))
        _INSTALLED = True
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _one(finished: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [span for span in finished if span.name == name]
    assert len(matching) == 1, (name, [span.name for span in finished])
    return matching[0]


def _parent_of(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.parent is not None, child.name
    assert child.context is not None
    assert parent.context is not None
    assert child.context.trace_id == parent.context.trace_id, (child.name, parent.name)
    assert child.parent.span_id == parent.context.span_id, (child.name, parent.name)


async def test_webhook_trace_reaches_the_push_and_carries_no_secret(
    app_factory: AppFactory, spans: InMemorySpanExporter
) -> None:
    """SERVER -> ingest -> db write -> PRODUCER (XADD) -> CONSUMER -> PUBLISH -> push, one trace."""
    app = await app_factory()
    password = "tracing-password-" + "p" * 8
    user = await app.register(password=password)
    token = user["access_token"]
    watched = address(0x7ACE)
    await watch(app, token, watched)
    login = await app.http.post(
        "/api/auth/login", json={"username": user["user"]["username"], "password": password}
    )
    assert login.status_code == 200
    # A token in a query string must not reach http.url / url.query either.
    assert (await app.http.get(f"/api/me?token={token}", headers=app.auth(token))).status_code == 200
    async with client(app, token) as ws:
        await ready(ws)
        body = json.dumps(webhook(activity("external", frm=address(1), to=watched))).encode()
        signature = sign(body)
        response = await app.http.post(
            "/webhooks/alchemy",
            content=body,
            headers={"Content-Type": "application/json", "X-Alchemy-Signature": signature},
        )
        assert response.status_code == 200, response.text
        [frame] = await recv_frames(ws, 1)
        assert frame["type"] == "new_transaction"

        async def pushed() -> bool:
            return any(span.name == "push" for span in spans.get_finished_spans())

        await eventually(pushed, within=5, what="the push span")

    finished = list(spans.get_finished_spans())
    server = _one(finished, "POST /webhooks/alchemy")
    ingest = _one(finished, "ingest webhook")
    store = _one(finished, "ingest store")
    producer = _one(finished, "send feed:stream")
    consumer = _one(finished, "deliver feed:stream")
    fanout = _one(finished, "publish feed:user:{user_id}")
    push = _one(finished, "push")
    assert server.kind is SpanKind.SERVER
    assert (store.kind, producer.kind, consumer.kind) == (
        SpanKind.CLIENT,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
    )
    assert (fanout.kind, push.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    for child, parent in [
        (ingest, server),
        (store, ingest),
        (producer, store),
        (consumer, producer),
        (fanout, consumer),
        (push, fanout),
    ]:
        _parent_of(child, parent)

    assert store.attributes is not None
    assert store.attributes["db.system.name"] == "postgresql"
    assert producer.attributes is not None
    assert producer.attributes["messaging.system"] == "redis"
    assert producer.attributes["messaging.destination.name"] == "feed:stream"
    assert producer.attributes["messaging.operation.type"] == "send"
    entry_id = producer.attributes["messaging.message.id"]
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.message.id"] == entry_id
    assert consumer.attributes["messaging.consumer.group.name"] == "feed:consumers"
    assert consumer.attributes["messaging.destination.name"] == "feed:stream"
    assert fanout.attributes is not None
    assert fanout.attributes["messaging.batch.message_count"] == 1
    assert push.attributes is not None
    assert push.attributes["chainfeed.connections"] == 1
    assert push.attributes["chainfeed.feed_item_id"] == frame["id"]

    secrets = {token, signature, password, app.settings.jwt_secret, *app.settings.alchemy_signing_keys}
    for span in finished:
        texts = [span.name, *(str(value) for value in (span.attributes or {}).values())]
        texts += [str(value) for event in span.events for value in (event.attributes or {}).values()]
        for text in texts:
            for secret in secrets:
                assert secret not in text, (span.name, text)
    me = _one(finished, "GET /api/me")
    assert me.attributes is not None
    assert any("[redacted]" in str(value) for value in me.attributes.values()), me.attributes


def test_push_envelope_carries_the_traceparent() -> None:
    """The PUB/SUB envelope keeps the trace context beside the frame, and envelopes without one parse."""
    with tracer.start_as_current_span("parent") as span:
        traceparent = format_traceparent(span.get_span_context())
    frame = '{"type":"new_transaction","id":3}'
    assert unpack(pack_push(3, 2, 1714564800000, frame, traceparent)) == Push(
        3, 2, 1714564800000, frame, traceparent
    )
    assert unpack(pack_push(3, 2, 1714564800000, frame)) == Push(3, 2, 1714564800000, frame)
    context = context_from_traceparent(traceparent)
    assert context is not None
    with tracer.start_as_current_span("child", context=context) as child:
        assert child.get_span_context().trace_id == span.get_span_context().trace_id


@pytest.mark.parametrize("bad", ["", "00-xyz", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "00-zz-yy-01"])
def test_a_bad_traceparent_starts_no_trace(bad: str) -> None:
    """Anything but a valid W3C traceparent is ignored (the push span then starts a trace)."""
    assert context_from_traceparent(bad) is None


def test_span_attributes_are_redacted_at_start(spans: InMemorySpanExporter) -> None:
    """Tokens, bearer credentials and signatures in any string attribute are masked."""
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
    with tracer.start_as_current_span(
        "request",
        attributes={
            "url.query": f"token={jwt}&since=3",
            "http.url": f"http://127.0.0.1/ws?token={jwt}",
            "http.request.header.authorization": f"Bearer {jwt}",
            "http.status_code": 200,
        },
    ):
        pass
    [span] = spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["url.query"] == "token=[redacted]&since=3"
    assert jwt not in str(dict(span.attributes))
    assert span.attributes["http.status_code"] == 200


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that keeps the span names of every POST /v1/traces."""

    names: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.names.extend(span.name for span in scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


async def test_spans_are_exported_over_otlp_when_an_endpoint_is_set(
    settings: Settings, tmp_path: Path
) -> None:
    """``chainfeed serve`` with OTEL_EXPORTER_OTLP_ENDPOINT posts its spans to ``/v1/traces``."""
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
        async with (
            serve(
                settings,
                tmp_path / "serve.log",
                OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                OTEL_BSP_SCHEDULE_DELAY="100",
            ) as (_, base_url),
            httpx.AsyncClient(base_url=base_url) as http_client,
        ):
            response = await http_client.post(
                "/webhooks/alchemy", content=b"{}", headers={"X-Alchemy-Signature": "0"}
            )
            assert response.status_code == 401

            async def exported() -> bool:
                return "POST /webhooks/alchemy" in _Collector.names and "ingest webhook" in _Collector.names

            await eventually(exported, within=10, what="spans at the collector")
    finally:
        collector.shutdown()
        thread.join(timeout=5)
        collector.server_close()
