"""A FIFO for one consumer per connection, with no memory held while it is empty.

:class:`asyncio.Queue` allocates three deques up front and an :class:`asyncio.Event` one; a
process holding 20,000 connections pays for every one of them while nothing waits
(bench/connections.py traced ~12 KiB per connection to such empty deques). This queue holds a
deque only while items wait and a future only while its consumer waits. Used for each
connection's outgoing frames (:mod:`chainfeed.delivery.hub`) and for what uvicorn hands the app
(:mod:`chainfeed.web.wsprotocol`).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Generic, TypeVar

__all__ = ["LeanQueue"]

T = TypeVar("T")


class LeanQueue(Generic[T]):
    """FIFO with one consumer; ``limit`` (0: none) makes :meth:`put_nowait` raise QueueFull."""

    __slots__ = ("_items", "_limit", "_waiter")

    def __init__(self, limit: int = 0) -> None:
        self._items: collections.deque[T] | None = None
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        """Items waiting."""
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        """Nothing waiting."""
        return not self._items

    def put_nowait(self, item: T) -> None:
        """Append; raises :class:`asyncio.QueueFull` at the limit."""
        items = self._items
        if items is None:
            items = self._items = collections.deque()
        elif self._limit and len(items) >= self._limit:
            raise asyncio.QueueFull
        items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_nowait(self) -> T:
        """The oldest item; raises :class:`asyncio.QueueEmpty` when there is none."""
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get(self) -> T:
        """The oldest item, waiting for one."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()
