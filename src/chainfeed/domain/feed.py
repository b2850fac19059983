"""The shape of a feed item as every client sees it (WebSocket frame and REST item alike)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chainfeed.names import FEED_ITEM_TYPE

__all__ = ["feed_frame"]


def feed_frame(
    *, item_id: int, user_id: int, created_at: datetime | str, payload: Any, type_: str = FEED_ITEM_TYPE
) -> dict[str, Any]:
    """``{"type", "id", "user_id", "created_at", "payload"}``: one dict for both REST and WebSocket."""
    created = created_at.isoformat() if isinstance(created_at, datetime) else created_at
    return {"type": type_, "id": item_id, "user_id": user_id, "created_at": created, "payload": payload}
