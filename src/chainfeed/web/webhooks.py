"""``POST /webhooks/alchemy``: Alchemy Notify deliveries into the ingest use case.

The handler reads the raw body itself (the signature covers the exact bytes, so nothing may parse
it first); Litestar enforces ``request_max_body_size`` while it is read, and the 413 is counted
here. Everything else (401, 400, 503) is raised by :func:`chainfeed.ingest.webhook.ingest_webhook` and
mapped to answers in ``chainfeed.web.errors``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from litestar import Request, post
from litestar.exceptions import HTTPException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.types import ControllerRouterHandler

from chainfeed.ingest.webhook import ingest_webhook, reject_too_large
from chainfeed.observability.metrics import WEBHOOK_REQUESTS
from chainfeed.web.deps import RuntimeDep
from chainfeed.web.openapi import error_responses

__all__ = ["ROUTES"]

SIGNATURE_HEADER = "x-alchemy-signature"
#: A body not fully received within this many seconds is refused with 408 (a slow-body client
#: would otherwise hold a request, and its buffers, for as long as it likes).
BODY_READ_TIMEOUT = 10.0

log = structlog.get_logger(__name__)


@post("/webhooks/alchemy", status_code=200, responses=error_responses(400, 401, 408, 413, 503))
async def alchemy_webhook(request: Request[Any, Any, Any], runtime: RuntimeDep) -> dict[str, int]:
    """Store one Address Activity delivery; ``{"activities": n, "new_feed_items": m}``."""
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT):
            body = await request.body()
    except RequestEntityTooLarge:
        reject_too_large(request.content_length, runtime.settings.webhook_max_bytes)
        raise
    except TimeoutError:
        WEBHOOK_REQUESTS.labels(outcome="timeout").inc()
        log.warning("webhook rejected", outcome="timeout", content_length=request.content_length)
        raise HTTPException(status_code=408, detail="request body not received in time") from None
    result = await ingest_webhook(
        body,
        request.headers.get(SIGNATURE_HEADER),
        signing_keys=runtime.settings.alchemy_signing_keys,
        pool=runtime.pool,
        relay=runtime.relay,
        probe=runtime.probe,
        items_per_minute=runtime.settings.feed_items_per_user_minute,
    )
    return result.as_json()


ROUTES: list[ControllerRouterHandler] = [alchemy_webhook]
