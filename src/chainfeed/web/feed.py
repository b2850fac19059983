"""History of the user's feed: ``GET /api/feed?limit=50&before=ID``."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get
from litestar.di import Provide
from litestar.params import QueryParameter

from chainfeed.storage.feed import feed_page
from chainfeed.web.deps import RuntimeDep, UserDep, provide_user
from chainfeed.web.openapi import error_responses

__all__ = ["FeedController"]

#: Feed item ids are PostgreSQL bigints: a larger cursor is the client's mistake (400), and must
#: not reach the driver (which overflows: 500).
_MAX_ID = 2**63 - 1


class FeedController(Controller):
    """Items newest first, each shaped like the WebSocket frame, paged by ``before``."""

    path = "/api/feed"
    dependencies = {"user": Provide(provide_user)}  # noqa: RUF012

    @get(responses=error_responses(400, 401, 503))
    async def page(
        self,
        user: UserDep,
        runtime: RuntimeDep,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        before: Annotated[int | None, QueryParameter(ge=1, le=_MAX_ID)] = None,
    ) -> dict[str, Any]:
        """One page and the cursor for the next (``null`` at the end)."""
        items, next_before = await feed_page(runtime.pool, user.id, limit=limit, before=before)
        return {"items": items, "next_before": next_before}
