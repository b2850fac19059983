"""The Litestar application factory: routes, dependencies, error mapping and the lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.plugins.prometheus import PrometheusConfig

from chainfeed import __version__
from chainfeed.config import Settings
from chainfeed.observability import metrics as _metrics  # noqa: F401 - registers every metric at start
from chainfeed.observability.tracing import configure_tracing
from chainfeed.runtime import open_runtime
from chainfeed.web.addresses import AddressController
from chainfeed.web.auth import AuthController, MeController
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

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        configure_tracing()
        async with open_runtime(settings) as runtime:
            app.state.runtime = runtime
            yield

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
        openapi_config=OpenAPIConfig(title="ChainFeed", version=__version__),
        request_max_body_size=settings.webhook_max_bytes,
        logging_config=None,  # structlog owns logging (configure_logging at the entry point)
        on_app_init=[_no_debug],
    )


def _no_debug(config: AppConfig) -> AppConfig:
    """Never serve tracebacks to clients, whatever LITESTAR_DEBUG says."""
    config.debug = False
    return config
