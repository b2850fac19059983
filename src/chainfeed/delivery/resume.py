"""What a connection that comes back is sent from PostgreSQL: its user's items after its cursor.

A resume (``since`` on connect, or a ``{"type":"resume"}`` frame) sends the late items first
(ids below the cursor that reached the stream after it, see :func:`chainfeed.storage.feed.feed_resume`),
then pages of items after the cursor until one is empty. :class:`Replay` does that in as few
queries as it can: the first query fetches the late items and the first page together; when that
page was short the next page request is answered with nothing, without a query (what is committed
later was published after the user's channel was subscribed, and reaches the connection live).
A connection whose PUB/SUB pushes may have been missed before it sent anything asks for what was
published since it opened (:meth:`Replay.recent`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

from chainfeed.domain.frames import encode_item
from chainfeed.storage.feed import feed_published_since, feed_resume, feed_since
from chainfeed.storage.pool import Pool

__all__ = ["REPLAY_PAGE", "Frame", "Replay"]

#: Feed items per replay query.
REPLAY_PAGE = 500


class Frame(NamedTuple):
    """A replayed feed item: its id (to skip its live copy) and its frame text."""

    item_id: int
    text: str


class Replay:
    """One connection's resume queries (one object per connection: it remembers a fetched page)."""

    def __init__(self, pool: Pool, user_id: int) -> None:
        self._pool = pool
        self._user_id = user_id
        #: Pages already fetched, by the id they follow.
        self._ahead: dict[int, list[Frame]] = {}

    async def late(self, since: int) -> list[Frame]:
        """Items below ``since`` published after it; fetches the first page after ``since`` along."""
        late, page = await feed_resume(self._pool, self._user_id, since, limit=REPLAY_PAGE)
        first = _frames(page)
        self._ahead = {since: first}
        if first and len(page) < REPLAY_PAGE:
            self._ahead[first[-1].item_id] = []
        return _frames(late)

    async def page(self, after: int) -> list[Frame]:
        """The next items after ``after``, oldest first; empty at the end."""
        fetched = self._ahead.pop(after, None)
        if fetched is not None:
            return fetched
        return _frames(await feed_since(self._pool, self._user_id, after, limit=REPLAY_PAGE))

    async def recent(self, opened_at: float) -> list[Frame]:
        """Items published since ``opened_at`` (unix seconds, less a second for clock skew)."""
        at = datetime.fromtimestamp(opened_at - 1.0, tz=UTC)
        return _frames(await feed_published_since(self._pool, self._user_id, at))


def _frames(items: list[dict[str, Any]]) -> list[Frame]:
    return [Frame(item["id"], encode_item(item)) for item in items]
