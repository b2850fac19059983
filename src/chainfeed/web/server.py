"""How ChainFeed runs under uvicorn: one place for the server options shared by ``dev`` and ``serve``."""

from __future__ import annotations

import gc
import logging

import uvicorn
from litestar import Litestar
from uvicorn.supervisors import Multiprocess

from chainfeed import config
from chainfeed.config import Settings
from chainfeed.observability.logging import configure_logging
from chainfeed.observability.multiprocess import multiprocess_metrics
from chainfeed.web import create_app
from chainfeed.web.wsprotocol import WebSocketProtocol

__all__ = ["app_from_env", "quiet_handshake_lines", "run_server", "uvicorn_config"]

#: Inbound WebSocket frames larger than this are refused with close code 1009 (SPEC).
WS_MAX_INBOUND_BYTES = 4096
#: What uvicorn and websockets log at INFO for every WebSocket (on the ``uvicorn.error`` logger).
_HANDSHAKE_LINES = frozenset({'%s - "WebSocket %s" [accepted]', "connection open", "connection closed"})


class _QuietHandshakes(logging.Filter):
    """Drops the three INFO lines uvicorn and websockets write per WebSocket connection.

    Each went through the whole structlog chain (the first one with the query string to redact)
    for facts our own ``websocket client connected`` / ``disconnected`` lines already carry: in a
    reconnect storm that was some 5 % of the process's CPU. Refused handshakes and anything at
    WARNING or above still pass; at CHAINFEED_LOG_LEVEL=debug the filter is not installed.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.INFO or record.msg not in _HANDSHAKE_LINES


def quiet_handshake_lines(level: str) -> None:
    """Install :class:`_QuietHandshakes` on uvicorn's logger unless logging at debug (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    for existing in logger.filters:
        if isinstance(existing, _QuietHandshakes):
            logger.removeFilter(existing)
    if level != "debug":
        logger.addFilter(_QuietHandshakes())


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


def run_server(app: Litestar | str, settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    """Serve until stopped: in this process, or with ``workers`` > 1 in uvicorn's worker processes.

    Several workers need the app as an import string (each builds its own) and share one socket;
    /metrics then sums every worker's values (prometheus multiprocess mode).
    """
    cfg = uvicorn_config(app, settings, host=host, port=port, workers=workers)
    if workers > 1:
        with multiprocess_metrics():
            Multiprocess(cfg, sockets=[cfg.bind_socket()]).run()
    else:
        uvicorn.Server(cfg).run()


def app_from_env() -> Litestar:
    """The app built from the environment: the factory ``serve`` gives each uvicorn worker."""
    settings = config.load(dev=None)
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    quiet_handshake_lines(settings.log_level)
    settings.require_services()
    app = create_app(settings)
    # What exists now (modules, the app) lives as long as the process: frozen out of the cyclic
    # collector's sight, a full collection scans only what connections and requests made. Before,
    # such collections paused the loop 15-70 ms and set the delivery p99 (bench/delivery.py).
    gc.collect()
    gc.freeze()
    return app
