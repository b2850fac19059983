"""The one place that maps ChainFeed errors to HTTP answers ``{"error": "..."}``."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from chainfeed.broker.client import REDIS_DOWN
from chainfeed.errors import (
    AuthError,
    ChainFeedError,
    ConflictError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
    ValidationError,
)
from chainfeed.storage.pool import POSTGRES_DOWN, InputRefused

__all__ = ["EXCEPTION_HANDLERS"]

log = structlog.get_logger(__name__)

#: Seconds a 503's Retry-After asks for: an outage is rarely shorter, and Alchemy backs off anyway.
UNAVAILABLE_RETRY_AFTER = 5

_STATUS: dict[type[ChainFeedError], int] = {
    ValidationError: 400,
    AuthError: 401,
    NotFoundError: 404,
    ConflictError: 409,
    RateLimitedError: 429,
    UnavailableError: 503,
}


def _status_for(exc: ChainFeedError) -> int:
    for kind, status in _STATUS.items():
        if isinstance(exc, kind):
            return status
    return HTTP_500_INTERNAL_SERVER_ERROR


def chainfeed_error(_: Request[Any, Any, Any], exc: ChainFeedError) -> Response[dict[str, str]]:
    """``{"error": message}`` with the status the error kind implies."""
    status = _status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc, RateLimitedError):
        headers = {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, UnavailableError):
        headers = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)}
    return Response({"error": str(exc)}, status_code=status, headers=headers, media_type=MediaType.JSON)


def backend_down(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    """PostgreSQL or Redis went away mid-request: 503 so the caller (Alchemy) retries."""
    return Response({"error": "service temporarily unavailable"}, status_code=503, media_type=MediaType.JSON,
                    headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)})  # fmt: skip


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, object]]:
    """Litestar's own errors (validation, 404, 405, 413) in the same ``{"error": ...}`` shape."""
    body: dict[str, object] = {"error": exc.detail}
    if exc.extra:
        body["details"] = exc.extra
    return Response(body, status_code=exc.status_code, headers=exc.headers, media_type=MediaType.JSON)


def input_refused(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    """PostgreSQL refused a value a client sent (a NUL character, a number out of range): the
    client's input, so 400; the validation that should have caught it is missing somewhere."""
    log.warning("input refused by postgresql", error=type(exc).__name__)
    return Response({"error": "malformed input: a value the database cannot store"}, status_code=400,
                    media_type=MediaType.JSON)  # fmt: skip


def unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    """A bug: log it once with the traceback (not the query string) and answer a bare 500."""
    log.exception("unhandled error", method=request.method, path=request.url.path)
    return Response({"error": "internal server error"}, status_code=500, media_type=MediaType.JSON)


EXCEPTION_HANDLERS: dict[type[Exception], object] = {
    Exception: unexpected,
    ChainFeedError: chainfeed_error,
    HTTPException: http_error,
    **dict.fromkeys((*POSTGRES_DOWN, *REDIS_DOWN), backend_down),
    InputRefused: input_refused,
}
