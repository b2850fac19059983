"""Redis Streams for delivery: the consumer group, claims, dead letters, trimming and stream stats.

Every multi-step read-then-write runs as one Lua script, so it is atomic: a claim reads the
delivery count it just raised, a trim cannot race a consumer that is reading, and a consumer is
only removed from the group while it provably holds nothing. The scripts use only commands of
Redis 6.2 (the embedded server) and later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from chainfeed.broker.presence import live_consumers
from chainfeed.broker.wire import Commands

log = structlog.get_logger(__name__)

#: A Redis command as its parts.
Command = list[str]

__all__ = ["Claimed", "Command", "ConsumerGroup", "Entry", "StreamStats"]

#: ``(entry id, fields)`` as XREADGROUP returns it.
Entry = tuple[str, dict[str, str]]
#: A trim looks at most this many entries at once (it runs again a few seconds later).
TRIM_SCAN_LIMIT = 10_000

_PRELUDE = """
local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function id_lt(a, b)
  local am, as = parse_id(a)
  local bm, bs = parse_id(b)
  return am < bm or (am == bm and as < bs)
end
local function as_map(flat)
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
  return m
end
"""

# KEYS[1] stream; ARGV group, consumer, min idle ms, start id, count.
# Claims idle entries one by one with XCLAIM, which (unlike XAUTOCLAIM on Redis 6.2) says which
# entries no longer exist: those are acknowledged, there is nothing left to deliver.
_CLAIM = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], ARGV[4], '+', ARGV[5])
local out, last = {}, false
for _, p in ipairs(pending) do
  last = p[1]
  local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], p[1])
  local entry = claimed[1]
  if entry and entry[2] then
    table.insert(out, {p[1], entry[2], p[4] + 1})
  else
    redis.call('XACK', KEYS[1], ARGV[1], p[1])
  end
end
return {last, out, #pending}
"""

# KEYS[1] stream; ARGV group. Returns {length, pending, oldest unacknowledged id or nil, now ms}.
_STATS = (
    _PRELUDE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, false, now} end
local length = redis.call('XLEN', KEYS[1])
local pending, oldest, last = 0, false, '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local group = as_map(g)
  if group['name'] == ARGV[1] then
    pending, last = group['pending'], group['last-delivered-id']
  end
end
if pending > 0 then
  oldest = redis.call('XPENDING', KEYS[1], ARGV[1])[2]
else
  local undelivered = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
  if #undelivered > 0 then oldest = undelivered[1][1] end
end
return {length, pending, oldest, now}
"""
)

# KEYS[1] stream; ARGV maxlen, scan limit. Trims toward maxlen with MINID, never past the first
# entry some group has not acknowledged: its oldest pending entry, or the first one it has not
# even been handed (everything after its last-delivered-id).
_TRIM = (
    _PRELUDE
    + """
local maxlen = tonumber(ARGV[1])
local length = redis.call('XLEN', KEYS[1])
if length <= maxlen then return 0 end
local excess = math.min(length - maxlen, tonumber(ARGV[2]))
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess + 1)
local keep = head[#head][1]
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local group = as_map(g)
  if id_lt(group['last-delivered-id'], keep) then keep = group['last-delivered-id'] end
  if group['pending'] > 0 then
    local first = redis.call('XPENDING', KEYS[1], group['name'])[2]
    if id_lt(first, keep) then keep = first end
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', keep)
"""
)

# KEYS[1] stream; ARGV group, min idle ms, consumer to keep. Deletes consumers that hold nothing.
_REMOVE_STALE = """
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local consumer = {}
  for i = 1, #c, 2 do consumer[c[i]] = c[i + 1] end
  if consumer['pending'] == 0 and consumer['idle'] > tonumber(ARGV[2]) and consumer['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], consumer['name'])
    table.insert(removed, consumer['name'])
  end
end
return removed
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    """An entry taken over from an idle consumer; ``deliveries`` includes this claim."""

    entry_id: str
    fields: dict[str, str]
    deliveries: int


@dataclass(frozen=True, slots=True)
class StreamStats:
    """What the gauges show: length, pending (delivered, unacknowledged) and the consumer lag."""

    length: int
    pending: int
    #: Age of the oldest entry the group has not acknowledged; 0 when there is none.
    lag_seconds: float


class ConsumerGroup:
    """One consumer (``consumer``) of ``group`` on ``stream``, and the group-wide chores."""

    def __init__(self, redis: Redis, *, stream: str, group: str, consumer: str) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        #: A dedicated connection for the hot commands (read, publish and acknowledge).
        self.wire = Commands(redis)
        self._claim = redis.register_script(_CLAIM)
        self._stats = redis.register_script(_STATS)
        self._trim = redis.register_script(_TRIM)
        self._remove_stale = redis.register_script(_REMOVE_STALE)

    async def ensure(self) -> bool:
        """Create the group (and the stream) if missing; True when this call created it.

        The group starts at the beginning of the stream, so entries appended before it existed
        are delivered too.
        """
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    async def read(self, *, count: int, block_ms: int, after: Sequence[Command] = ()) -> list[Entry]:
        """Up to ``count`` new entries for this consumer, waiting at most ``block_ms`` for the first.

        ``after``: commands sent first, in the same write (the last batch's publishes and XACK);
        a refused one raises ResponseError. On the group's own connection
        (:mod:`chainfeed.broker.wire`): this is the hot loop. A group that vanished (the stream
        was deleted, Redis restarted without its data) is created again, and nothing is returned.
        """
        read = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", str(count), "BLOCK", str(block_ms)]
        try:
            replies = await self.wire.execute(
                [*after, [*read, "STREAMS", self.stream, ">"]], reply_within=block_ms / 1000 + 5.0
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group vanished; creating it again", stream=self.stream, group=self.group)
            await self.ensure()
            return []
        reply = replies[-1]
        if not reply:
            return []
        return [
            (entry_id, _as_dict(flat) if flat else {}) for _, entries in reply for entry_id, flat in entries
        ]

    def publish_and_ack_commands(
        self, messages: Sequence[tuple[str, str]], entry_ids: Sequence[str]
    ) -> list[Command]:
        """PUBLISH ``(channel, message)`` pairs, then XACK ``entry_ids``: to send in one write.

        Redis runs them in order, so an entry is acknowledged only once its push went out.
        """
        commands: list[Command] = [["PUBLISH", channel, message] for channel, message in messages]
        if entry_ids:
            commands.append(["XACK", self.stream, self.group, *entry_ids])
        return commands

    async def publish_and_ack(self, messages: Sequence[tuple[str, str]], entry_ids: Sequence[str]) -> None:
        """:meth:`publish_and_ack_commands`, sent now in one round trip."""
        commands = self.publish_and_ack_commands(messages, entry_ids)
        if commands:
            await self.wire.execute(commands)

    async def claim(
        self, *, min_idle_ms: int, count: int, after: str | None = None
    ) -> tuple[list[Claimed], str]:
        """Take over up to ``count`` entries idle for ``min_idle_ms``, oldest first, after ``after``.

        Returns them and the cursor for the next call ("" when the pending list is exhausted).
        """
        start = "-" if after is None else f"({after}"
        last, claimed, examined = await self._claim(
            keys=[self.stream], args=[self.group, self.consumer, min_idle_ms, start, count]
        )
        entries = [
            Claimed(entry_id, _as_dict(flat), int(deliveries)) for entry_id, flat, deliveries in claimed
        ]
        return entries, (last if int(examined) >= count else "")

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """Acknowledge handled entries (one call for the whole batch)."""
        if entry_ids:
            await self.redis.xack(self.stream, self.group, *entry_ids)

    async def dead_letter(
        self, dead_letter_stream: str, letters: Sequence[tuple[str, dict[str, str]]]
    ) -> None:
        """Copy ``(entry id, dead-letter fields)`` to ``dead_letter_stream`` and acknowledge, atomically."""
        if not letters:
            return
        pipe = self.redis.pipeline(transaction=True)
        for _, fields in letters:
            pipe.xadd(dead_letter_stream, fields)  # type: ignore[arg-type]  # dict[str, str] is a FieldT mapping
        pipe.xack(self.stream, self.group, *(entry_id for entry_id, _ in letters))
        await pipe.execute()

    async def stats(self) -> StreamStats:
        """Length, pending count and lag of the group, read in one consistent step."""
        length, pending, oldest, now_ms = await self._stats(keys=[self.stream], args=[self.group])
        lag = max(0.0, (int(now_ms) - int(oldest.partition("-")[0])) / 1000) if oldest else 0.0
        return StreamStats(length=int(length), pending=int(pending), lag_seconds=lag)

    async def trim(self, maxlen: int) -> int:
        """Trim toward ``maxlen`` entries without touching unacknowledged ones; returns how many went."""
        removed = await self._trim(keys=[self.stream], args=[maxlen, TRIM_SCAN_LIMIT])
        return int(removed)

    async def active_consumers(self) -> int:
        """Live consumers: instances whose heartbeat is fresh (each instance consumes the group).

        The no-consumer alert's gauge. Not XINFO CONSUMERS: a consumer is listed there only once
        something was delivered to it (a fresh instance on a quiet stream is not), and its
        ``idle`` counts from the last delivery before Redis 7.2 (a quiet one looked dead).
        """
        return len(await live_consumers(self.redis))

    async def leave(self) -> bool:
        """At shutdown: remove this consumer from the group if it holds nothing pending (what it
        holds stays for another instance to claim); True when removed."""
        pending = await self.redis.xpending_range(self.stream, self.group, min="-", max="+", count=1,
                                                  consumername=self.consumer)  # fmt: skip
        if pending:
            return False
        await self.redis.xgroup_delconsumer(self.stream, self.group, self.consumer)
        return True

    async def remove_stale_consumers(self, *, min_idle_ms: int) -> list[str]:
        """Delete consumers idle for ``min_idle_ms`` that hold no pending entry (never this one)."""
        removed: list[str] = await self._remove_stale(
            keys=[self.stream], args=[self.group, min_idle_ms, self.consumer]
        )
        return removed


def _as_dict(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
