"""The Litestar application factory: routes, dependencies, error mapping and the lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.plugins.prometheus import PrometheusConfig

from chainfeed import __version__
from chainfeed.config import Settings
from chainfeed.observability import metrics as _metrics  # noqa: F401 - registers every metric at start
from chainfeed.observability.tracing import configure_tracing, http_span_details, redact_span_attributes
from chainfeed.runtime import open_runtime
from chainfeed.web.addresses import AddressController
from chainfeed.web.auth import AuthController, MeController, RefreshController
from chainfeed.web.deps import provide_runtime
from chainfeed.web.errors import EXCEPTION_HANDLERS
from chainfeed.web.feed import FeedController
from chainfeed.web.ops import MetricsController, healthz, readyz
from chainfeed.web.page import ROUTES as PAGE_ROUTES
from chainfeed.web.webhooks import ROUTES as WEBHOOK_ROUTES
from chainfeed.web.ws import ROUTES as WS_ROUTES

__all__ = ["create_app"]


def create_app(settings: Settings) -> Litestar:
    """An app whose lifespan opens the runtime (pool, Redis, workers) and closes it on shutdown."""

    provider = configure_tracing(otlp_endpoint=settings.otlp_endpoint)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:
            async with open_runtime(settings) as runtime:
                app.state.runtime = runtime
                yield
        finally:
            provider.force_flush(timeout_millis=5000)  # spans of the last requests reach the collector

    prometheus = PrometheusConfig(
        app_name="chainfeed",
        prefix="http",
        group_path=True,  # label by route template, never by the concrete path (no ids, no tokens)
        exclude=["/metrics"],
        scopes={ScopeType.HTTP},  # WebSockets have their own metrics; an open socket is no request
    )
    return Litestar(
        route_handlers=[
            AuthController,
            MeController,
            RefreshController,
            AddressController,
            FeedController,
            healthz,
            readyz,
            MetricsController,
            *WEBHOOK_ROUTES,
            *WS_ROUTES,
            *PAGE_ROUTES,
        ],
        dependencies={"runtime": Provide(provide_runtime, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        middleware=[prometheus.middleware],
        plugins=[
            # A SERVER span per HTTP request (not per WebSocket: an open socket is no request, and
            # its URL holds the token); attributes are redacted by the tracing set-up.
            OpenTelemetryPlugin(
                OpenTelemetryConfig(
                    scopes={ScopeType.HTTP},
                    exclude=["^/metrics", "^/healthz", "^/readyz"],
                    exclude_spans=["receive", "send"],
                    scope_span_details_extractor=http_span_details,
                    server_request_hook_handler=redact_span_attributes,
                )
            )
        ],
        openapi_config=OpenAPIConfig(title="ChainFeed", version=__version__),
        request_max_body_size=settings.webhook_max_bytes,
        logging_config=None,  # structlog owns logging (configure_logging at the entry point)
        on_app_init=[_no_debug],
    )


def _no_debug(config: AppConfig) -> AppConfig:
    """Never serve tracebacks to clients, whatever LITESTAR_DEBUG says."""
    config.debug = False
    return config
