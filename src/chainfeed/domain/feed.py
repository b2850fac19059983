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
    ref: int | None = None,
) -> dict[str, Any]:
    """``{"type", "id", "seq", ["ref",] "user_id", "created_at", "payload"}``: one shape for REST
    and WebSocket.

    ``seq`` is the item's position in its user's feed; None (REST only) while the item still
    waits to be published and numbered. ``ref`` (a ``transaction_updated`` item's) names the item
    it updates; other items have no ``ref`` key.
    """
    created = created_at.isoformat() if isinstance(created_at, datetime) else created_at
    frame: dict[str, Any] = {"type": type_, "id": item_id, "seq": seq}
    if ref is not None:
        frame["ref"] = ref
    frame.update(user_id=user_id, created_at=created, payload=payload)
    return frame
