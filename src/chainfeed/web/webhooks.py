"""``POST /webhooks/alchemy``: Alchemy Notify deliveries into the ingest use case.

The handler reads the raw body itself (the signature covers the exact bytes, so nothing may parse
it first); Litestar enforces ``request_max_body_size`` while it is read, and the 413 is counted
here. Everything else (401, 400, 503) is raised by :func:`chainfeed.ingest.ingest_webhook` and
mapped to answers in ``chainfeed.web.errors``.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.types import ControllerRouterHandler

from chainfeed.errors import UnavailableError
from chainfeed.ingest import ingest_webhook, reject_too_large
from chainfeed.web.deps import RuntimeDep

__all__ = ["ROUTES"]

SIGNATURE_HEADER = "x-alchemy-signature"


@post("/webhooks/alchemy", status_code=200)
async def alchemy_webhook(request: Request[Any, Any, Any], runtime: RuntimeDep) -> dict[str, int]:
    """Store one Address Activity delivery; ``{"activities": n, "new_feed_items": m}``."""
    try:
        body = await request.body()
    except RequestEntityTooLarge:
        reject_too_large(request.content_length, runtime.settings.webhook_max_bytes)
        raise
    if runtime.relay is None:  # pragma: no cover - the runtime always starts the relay
        raise UnavailableError("outbox relay", "not started")
    result = await ingest_webhook(
        body,
        request.headers.get(SIGNATURE_HEADER),
        signing_keys=runtime.settings.alchemy_signing_keys,
        pool=runtime.pool,
        relay=runtime.relay,
    )
    return result.as_json()


ROUTES: list[ControllerRouterHandler] = [alchemy_webhook]
