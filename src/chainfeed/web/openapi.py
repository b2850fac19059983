"""What the OpenAPI schema says about error answers: one body type, one helper for every route.

Every error ChainFeed answers has the body ``{"error": "<message>"}`` (``chainfeed.web.errors``
makes it so, Litestar's own request validation included, which adds ``details``). A route lists
the statuses it can really give with ``responses=error_responses(401, 503, ...)``; the success
statuses stay on the route itself.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec

__all__ = ["ErrorBody", "error_responses"]


class ErrorBody(msgspec.Struct):
    """The body of every error answer."""

    error: str
    #: Only on a 400 from Litestar's request validation: which part of the request failed
    #: (``[{"message": ..., "key": ..., "source": ...}]``).
    details: list[dict[str, Any]] = msgspec.field(default_factory=list)


_WHY: dict[int, str] = {
    400: "Malformed request: invalid JSON, a missing or ill-typed field, a value out of range.",
    401: "Missing, invalid or expired credentials (`WWW-Authenticate: Bearer`).",
    404: "Not found.",
    408: "The request body was not received in time.",
    409: "Conflict: the name is taken or a limit is reached.",
    413: "The request body is too large.",
    429: "Too many failed logins for the account or from the address (`Retry-After` says how long).",
    503: "PostgreSQL or Redis is unavailable; retry later.",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` for a route handler: an ``ErrorBody`` answer for each of ``statuses``."""
    return {
        status: ResponseSpec(data_container=ErrorBody, description=_WHY[status], generate_examples=False)
        for status in statuses
    }
