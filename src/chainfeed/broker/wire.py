"""A lean Redis connection for the two hot loops: the stream consumer and the PUB/SUB subscriber.

redis-py's asyncio client spends, per command, a pool checkout with a timeout and a lock, a retry
wrapper and a coroutine per reply read; on the delivery path that cost more CPU than everything
else (see bench/delivery.py). Here replies are parsed by hiredis as bytes arrive, in a plain
:class:`asyncio.Protocol`: a command connection resolves one future per reply, in order; a
PUB/SUB connection hands each reply to a callback without any await.

Address and credentials come from the redis-py client's pool (so the one CHAINFEED_REDIS_URL
configures both). Errors are redis-py's: a lost connection raises ``ConnectionError``, a refused
command ``ResponseError``, so callers keep one set of outage handlers. Everything else (scripts,
admin, claims) stays on redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Commands", "Wire", "encode_commands", "open_wire"]

Part = str | int | bytes


def encode_commands(commands: Sequence[Sequence[Part]]) -> bytes:
    """Commands as RESP arrays of bulk strings, ready to write in one go (a pipeline)."""
    chunks: list[bytes] = []
    append = chunks.append
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for part in command:
            raw = part if isinstance(part, bytes) else str(part).encode()
            append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(chunks)


class Wire(asyncio.Protocol):
    """One socket to Redis; every parsed reply goes to ``on_reply`` as it arrives."""

    def __init__(self, on_reply: Callable[[Any], None]) -> None:
        self._reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self._on_reply = on_reply
        self.transport: asyncio.Transport | None = None
        #: Done once the connection is gone.
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_read = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        reader = self._reader
        reader.feed(data)
        on_reply = self._on_reply
        while (reply := reader.gets()) is not False:
            on_reply(reply)

    def send(self, *commands: Sequence[Part]) -> None:
        """Write commands; raises ConnectionError when the connection is gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise RedisConnectionError("redis connection closed")
        transport.write(encode_commands(commands))

    def close(self) -> None:
        """Close the socket (``lost`` completes)."""
        if self.transport is not None:
            self.transport.close()


async def open_wire(redis: Redis, on_reply: Callable[[Any], None]) -> Wire:
    """Connect a :class:`Wire` where ``redis`` connects; AUTH (its reply goes to ``on_reply``)."""
    kwargs = redis.connection_pool.connection_kwargs
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(kwargs.get("socket_connect_timeout") or 5.0):
            if kwargs.get("path"):
                _, wire = await loop.create_unix_connection(lambda: Wire(on_reply), kwargs["path"])
            else:
                tls = issubclass(redis.connection_pool.connection_class, SSLConnection)
                _, wire = await loop.create_connection(
                    lambda: Wire(on_reply),
                    kwargs.get("host", "localhost"),
                    kwargs.get("port", 6379),
                    ssl=ssl.create_default_context() if tls else None,
                )
    except TimeoutError as exc:
        raise RedisTimeoutError("timed out connecting to redis") from exc
    except OSError as exc:
        raise RedisConnectionError(f"cannot connect to redis: {exc}") from exc
    if kwargs.get("password"):
        username = kwargs.get("username")
        wire.send(["AUTH", username, kwargs["password"]] if username else ["AUTH", kwargs["password"]])
    return wire


class Commands:
    """A dedicated command connection: pipelined commands, replies matched in order.

    Connects on first use and again after a loss; a command that gets no reply within its
    timeout closes the connection (a late reply would be matched to the wrong command).
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._db = int(redis.connection_pool.connection_kwargs.get("db") or 0)
        self._wire: Wire | None = None
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._connecting: asyncio.Lock = asyncio.Lock()

    async def execute(self, commands: Sequence[Sequence[Part]], *, reply_within: float = 5.0) -> list[Any]:
        """Send ``commands`` in one write; their replies, in order. A refused one raises ResponseError."""
        wire = await self._connected()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self._pending.extend(futures)
        try:
            wire.send(*commands)
            async with asyncio.timeout(reply_within):
                replies = [await future for future in futures]
        except TimeoutError as exc:
            self._drop(wire)
            raise RedisTimeoutError("redis did not answer in time") from exc
        except BaseException:
            self._drop(wire)
            raise
        finally:
            for future in futures:  # the rest of a failed batch: retrieved, never reported
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(str(reply))
        return replies

    async def close(self) -> None:
        """Close the connection (pending commands fail with ConnectionError)."""
        if self._wire is not None:
            self._drop(self._wire)

    def _drop(self, wire: Wire) -> None:
        """Give up on ``wire`` now: a reply still on its way must never reach a later command."""
        wire.close()
        self._lost(wire)

    async def _connected(self) -> Wire:
        wire = self._wire
        if wire is not None:
            return wire
        async with self._connecting:
            if self._wire is not None:
                return self._wire
            wire = await open_wire(self._redis, self._reply)
            wire.lost.add_done_callback(functools.partial(self._on_lost, wire))
            password = self._redis.connection_pool.connection_kwargs.get("password")
            loop = asyncio.get_running_loop()
            setup = [loop.create_future() for _ in range(bool(password) + bool(self._db))]
            self._pending.extend(setup)
            if self._db:
                wire.send(["SELECT", self._db])
            self._wire = wire
            for future in setup:
                reply = await future
                if isinstance(reply, hiredis.ReplyError):
                    wire.close()
                    raise ResponseError(str(reply))
            return wire

    def _reply(self, reply: Any) -> None:
        if self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_result(reply)

    def _on_lost(self, wire: Wire, _lost: asyncio.Future[None]) -> None:
        self._lost(wire)

    def _lost(self, wire: Wire) -> None:
        if self._wire is not wire and self._wire is not None:
            return  # an older connection; its commands were failed when it went
        self._wire = None
        pending, self._pending = self._pending, collections.deque()
        for future in pending:
            if not future.done():
                future.set_exception(RedisConnectionError("redis connection lost"))
