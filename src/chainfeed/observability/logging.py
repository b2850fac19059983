"""structlog set-up: JSON in production, a readable console under ``dev``, secrets redacted.

uvicorn's and Litestar's stdlib loggers are routed through the same processors, so one format
covers every line. Redaction is a processor, not a convention: any ``token=`` in a message
(uvicorn logs the WebSocket handshake line with its query string) and any field named like a
secret is masked before the line is written.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "redact"]

_SECRET_QUERY = re.compile(r"((?:token|access_token|signature|password)=)[^&\s\"']+", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+")
_SECRET_KEYS = frozenset(
    {"token", "access_token", "password", "authorization", "signature", "x-alchemy-signature", "jwt_secret"}
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with tokens, bearer credentials and signatures masked."""
    text = _SECRET_QUERY.sub(rf"\1{REDACTED}", text)
    text = _BEARER.sub(rf"\1{REDACTED}", text)
    return _JWT.sub(REDACTED, text)


def _redact_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact(value)
        elif isinstance(value, tuple | list):
            event_dict[key] = type(value)(redact(v) if isinstance(v, str) else v for v in value)
    return event_dict


def _render_stdlib_args(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Format a stdlib record's ``%``-args into its message so redaction sees the final text."""
    record = event_dict.get("_record")
    if record is not None and record.args:
        event_dict["event"] = record.getMessage()
        record.args = ()
        record.msg = event_dict["event"]
    return event_dict


def configure_logging(*, fmt: str = "json", level: str = "info") -> None:
    """Configure structlog and the stdlib root logger once, at the entry point."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks become text before redaction, so a secret in an exception's message (or a
        # local's repr in a frame line) is masked like any other field.
        structlog.processors.format_exc_info,
        _redact_processor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_render_stdlib_args, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi", "litestar"):
        named = logging.getLogger(name)
        named.handlers[:] = []
        named.propagate = True
    # No access lines: they would carry query strings (the WebSocket token), and HTTP metrics and
    # spans cover requests. uvicorn decides per connection with ``hasHandlers()`` on this logger,
    # so it must neither have handlers nor propagate to the root's; ``access_log=False`` alone
    # does not hold, because this function runs again in each worker after uvicorn's own set-up
    # (the app factory configures logging) and used to turn propagation back on.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
