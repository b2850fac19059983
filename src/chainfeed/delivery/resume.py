"""What a connection reads from PostgreSQL: where it starts in its user's feed, and what it missed.

Every read is a range on ``feed_items (user_id, seq)``: the items after a position, oldest first,
a page at a time. A connection reads them when it resumes (``since``), when a push arrives
ahead of its position (a gap: something it should have had first was lost or is late), and when
its instance's PUB/SUB connection came back (whatever it missed meanwhile). See
docs/design/delivery.md for why that is every way an item can go missing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from chainfeed.domain.frames import encode_item
from chainfeed.storage.feed import feed_after, start_position
from chainfeed.storage.pool import Pool

__all__ = ["REPLAY_PAGE", "Frame", "Replay"]

#: Feed items per replay query (a connection never loads a backlog whole).
REPLAY_PAGE = 500


class Frame(NamedTuple):
    """A replayed feed item: its id, its place in the feed and its frame text."""

    item_id: int
    seq: int
    text: str


class Replay:
    """One user's feed in PostgreSQL, as a connection reads it."""

    def __init__(self, pool: Pool, user_id: int) -> None:
        self._pool = pool
        self._user_id = user_id

    async def start(self, since: int | None) -> int | None:
        """The position a connection starts at (see :func:`chainfeed.storage.feed.start_position`)."""
        return await start_position(self._pool, self._user_id, since)

    async def after(self, position: int, *, before: int | None = None) -> list[Frame]:
        """The next page of items after ``position`` (and before ``before``), in feed order."""
        items = await feed_after(self._pool, self._user_id, position, before=before, limit=REPLAY_PAGE)
        return _frames(items)


def _frames(items: list[dict[str, Any]]) -> list[Frame]:
    return [Frame(item["id"], item["seq"], encode_item(item)) for item in items]
