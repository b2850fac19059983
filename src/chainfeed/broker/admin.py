"""What an operator asks of the stream: its state (``stream info``) and the dead letters (``dlq``).

Plain reads and writes over one Redis client, shared by the CLI and tests; the consumer itself
lives in the delivery modules. "Lag" here is the SPEC's: the age of the oldest entry the group
has not yet acknowledged, whether it is pending or not yet delivered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from chainfeed.broker.presence import live_consumers
from chainfeed.errors import NotFoundError

__all__ = [
    "DEAD_LETTER_META",
    "DeadLetter",
    "GroupInfo",
    "StreamInfo",
    "dlq_list",
    "dlq_purge",
    "dlq_replay",
    "entry_age_seconds",
    "stream_info",
]

#: Fields the dead-letter stream adds to the original entry; replay strips them.
DEAD_LETTER_META = ("original_id", "deliveries", "error")


def _entries(raw: Any) -> list[tuple[str, dict[str, str]]]:
    """XRANGE's answer with the client's decode_responses=True, typed (redis-py types it loosely)."""
    return [(entry_id, dict(fields)) for entry_id, fields in raw or []]


def entry_age_seconds(entry_id: str, *, now: float | None = None) -> float:
    """Seconds since the entry was added (its id starts with the Redis time in ms)."""
    millis = int(entry_id.split("-", 1)[0])
    return max(0.0, (time.time() if now is None else now) - millis / 1000)


@dataclass
class ConsumerInfo:
    name: str
    pending: int
    #: Since XINFO's idea of its last activity; None for a live consumer XINFO does not list yet
    #: (nothing was delivered to it so far).
    idle_seconds: float | None
    #: Its instance's heartbeat is fresh (``presence.live_consumers``); False: stopped.
    live: bool = False


@dataclass
class GroupInfo:
    name: str
    last_delivered_id: str
    pending: int
    oldest_pending_id: str | None
    oldest_pending_age_seconds: float | None
    lag_seconds: float
    consumers: list[ConsumerInfo] = field(default_factory=list)


@dataclass
class StreamInfo:
    stream: str
    length: int
    first_entry_id: str | None
    last_entry_id: str | None
    dead_letters: int
    groups: list[GroupInfo] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _oldest_unacknowledged(redis: Redis, stream: str, group: str, last_delivered: str) -> str | None:
    """The id of the oldest entry the group has not acknowledged: pending, or not yet delivered."""
    summary = await redis.xpending(stream, group)
    candidates = []
    if summary and summary.get("pending"):
        candidates.append(summary["min"])
    undelivered = _entries(await redis.xrange(stream, min=f"({last_delivered}", max="+", count=1))
    if undelivered:
        candidates.append(undelivered[0][0])
    return min(candidates, key=lambda i: tuple(int(p) for p in i.split("-"))) if candidates else None


async def stream_info(redis: Redis, stream: str, dead_letter_stream: str) -> StreamInfo:
    """Length, first/last entry, groups with consumers, pending and lag: XINFO and XPENDING, combined."""
    now = time.time()
    length = await redis.xlen(stream)
    first = _entries(await redis.xrange(stream, count=1))
    last = _entries(await redis.xrevrange(stream, count=1))
    info = StreamInfo(
        stream=stream,
        length=length,
        first_entry_id=first[0][0] if first else None,
        last_entry_id=last[0][0] if last else None,
        dead_letters=await redis.xlen(dead_letter_stream),
    )
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        groups = []
    for raw in groups:
        name, last_delivered = raw["name"], raw["last-delivered-id"]
        summary = await redis.xpending(stream, name)
        oldest_pending = summary["min"] if summary and summary.get("pending") else None
        oldest = await _oldest_unacknowledged(redis, stream, name, last_delivered)
        group = GroupInfo(
            name=name,
            last_delivered_id=last_delivered,
            pending=int(raw["pending"]),
            oldest_pending_id=oldest_pending,
            oldest_pending_age_seconds=entry_age_seconds(oldest_pending, now=now) if oldest_pending else None,
            lag_seconds=entry_age_seconds(oldest, now=now) if oldest else 0.0,
        )
        live = await live_consumers(redis)
        for consumer in await redis.xinfo_consumers(stream, name):
            seen = ConsumerInfo(consumer["name"], int(consumer["pending"]), int(consumer["idle"]) / 1000)
            seen.live = seen.name in live
            group.consumers.append(seen)
        listed = {c.name for c in group.consumers}
        group.consumers += [ConsumerInfo(name, 0, None, live=True) for name in sorted(live - listed)]
        info.groups.append(group)
    return info


@dataclass
class DeadLetter:
    id: str
    fields: dict[str, str]

    @property
    def original_fields(self) -> dict[str, str]:
        """The entry as it was before it died (what replay puts back)."""
        return {k: v for k, v in self.fields.items() if k not in DEAD_LETTER_META}


async def dlq_list(redis: Redis, dead_letter_stream: str, *, limit: int = 50) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters."""
    return [DeadLetter(i, f) for i, f in _entries(await redis.xrange(dead_letter_stream, count=limit))]


async def dlq_replay(
    redis: Redis,
    dead_letter_stream: str,
    stream: str,
    *,
    ids: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Put dead letters back on the stream (all, or ``ids``); each move is atomic (MULTI: XADD + XDEL)."""
    if ids is None:
        letters = [DeadLetter(i, f) for i, f in _entries(await redis.xrange(dead_letter_stream))]
    else:
        letters = []
        for entry_id in ids:
            found = _entries(await redis.xrange(dead_letter_stream, min=entry_id, max=entry_id))
            if not found:
                raise NotFoundError(f"no dead letter with id {entry_id}")
            letters.append(DeadLetter(found[0][0], found[0][1]))
    for done, letter in enumerate(letters, 1):
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, letter.original_fields)  # type: ignore[arg-type]
            pipe.xdel(dead_letter_stream, letter.id)
            await pipe.execute()
        if progress:
            progress(done, len(letters))
    return len(letters)


async def dlq_purge(redis: Redis, dead_letter_stream: str) -> int:
    """Delete every dead letter; returns how many there were."""
    count: int = await redis.xlen(dead_letter_stream)
    await redis.delete(dead_letter_stream)
    return count
