"""The shape of a feed item as every client sees it (WebSocket frame and REST item alike)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chainfeed.names import FEED_ITEM_TYPE

__all__ = ["feed_frame"]


def feed_frame(
    *,
    item_id: int,
    seq: int | None,
    user_id: int,
    created_at: datetime | str,
    payload: Any,
    type_: str = FEED_ITEM_TYPE,
) -> dict[str, Any]:
    """``{"type", "id", "seq", "user_id", "created_at", "payload"}``: one shape for REST and WebSocket.

    ``seq`` is the item's position in its user's feed; None (REST only) while the item still
    waits to be published and numbered.
    """
    created = created_at.isoformat() if isinstance(created_at, datetime) else created_at
    return {
        "type": type_,
        "id": item_id,
        "seq": seq,
        "user_id": user_id,
        "created_at": created,
        "payload": payload,
    }
