"""How ChainFeed runs under uvicorn: one place for the server options shared by ``dev`` and ``serve``."""

from __future__ import annotations

import os

import uvicorn
from litestar import Litestar

from chainfeed import config
from chainfeed.config import Settings
from chainfeed.observability.logging import configure_logging
from chainfeed.web import create_app
from chainfeed.wsprotocol import WebSocketProtocol

__all__ = ["app_from_env", "uvicorn_config"]

#: Inbound WebSocket frames larger than this are refused with close code 1009 (SPEC).
WS_MAX_INBOUND_BYTES = 4096


def uvicorn_config(
    app: Litestar | str, settings: Settings, *, host: str, port: int, workers: int = 1
) -> uvicorn.Config:
    """uvicorn options: uvloop + httptools, small inbound frames, deflate offered, our logging kept."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        # A reconnect storm opens thousands of TCP connections at once: uvicorn's default of 2048
        # overflowed (the kernel drops the SYN, the client retries after 1 s, 3 s, ...).
        backlog=settings.listen_backlog,
        factory=isinstance(app, str),
        loop="uvloop",
        http="httptools",
        ws=WebSocketProtocol,  # websockets-sansio, closing with 1001 on shutdown
        ws_max_size=WS_MAX_INBOUND_BYTES,
        ws_per_message_deflate=True,
        ws_ping_interval=settings.ws_ping_interval,  # the SPEC heartbeat: protocol-level ping/pong
        ws_ping_timeout=settings.ws_pong_timeout,
        log_config=None,  # keep structlog's handlers (configure_logging)
        access_log=False,  # HTTP metrics and spans cover requests; access lines would log query strings
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )


def app_from_env() -> Litestar:
    """The app built from the environment: the factory ``serve`` gives each uvicorn worker."""
    settings = config.load(dev=os.environ.get("CHAINFEED_DEV") == "1")
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    settings.require_services()
    return create_app(settings)
