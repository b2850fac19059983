"""The lean Redis connection of the hot loops, on a real Redis: order, errors, database, losses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chainfeed.broker.wire import Commands, encode_commands
from chainfeed.devtools.embedded import EmbeddedRedis


def test_commands_are_encoded_as_resp_arrays_of_bulk_strings() -> None:
    assert encode_commands([["SET", "k", 1], ["GET", b"k"]]) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    )
    assert encode_commands([["SET", "k", "é"]]).endswith(b"$2\r\n\xc3\xa9\r\n")


@pytest.fixture
async def wire(redis: Redis) -> AsyncIterator[Commands]:
    commands = Commands(redis)
    try:
        yield commands
    finally:
        await commands.close()


async def test_pipelined_replies_come_back_in_order_in_the_clients_database(
    wire: Commands, redis: Redis
) -> None:
    """Same database as the redis-py client (its URL names one): what one writes the other reads."""
    replies = await wire.execute([["SET", "wire:a", "1"], ["INCR", "wire:a"], ["GET", "wire:a"], ["PING"]])
    assert replies == ["OK", 2, "2", "PONG"]
    assert await redis.get("wire:a") == "2"


async def test_a_refused_command_raises_redis_pys_response_error(wire: Commands) -> None:
    with pytest.raises(ResponseError, match=r"NOGROUP|no such key"):
        await wire.execute([["PING"], ["XREADGROUP", "GROUP", "g", "c", "STREAMS", "wire:none", ">"]])
    assert await wire.execute([["PING"]]) == ["PONG"]  # the connection is still in step


async def test_a_killed_connection_fails_its_command_and_the_next_one_reconnects(
    wire: Commands, redis: Redis
) -> None:
    await wire.execute([["CLIENT", "SETNAME", "wire-under-test"]])
    blocked = asyncio.create_task(wire.execute([["BLPOP", "wire:never", "5"]], reply_within=10))
    await asyncio.sleep(0.2)
    await redis.execute_command("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal")
    with pytest.raises(RedisConnectionError):
        await blocked
    assert await wire.execute([["PING"]]) == ["PONG"]


async def test_no_reply_in_time_is_a_timeout_and_the_connection_is_dropped(wire: Commands) -> None:
    with pytest.raises(RedisTimeoutError):
        await wire.execute([["BLPOP", "wire:never", "2"]], reply_within=0.2)
    assert await wire.execute([["PING"]]) == ["PONG"]  # a fresh connection: no stale reply


async def test_redis_down_is_a_connection_error(own_redis: EmbeddedRedis) -> None:
    url = own_redis.url
    client = Redis.from_url(url, decode_responses=True)
    commands = Commands(client)
    try:
        assert await commands.execute([["PING"]]) == ["PONG"]
        await asyncio.to_thread(own_redis.stop)
        with pytest.raises(RedisConnectionError):
            await commands.execute([["PING"]])
        await asyncio.to_thread(own_redis.start)
        assert await commands.execute([["PING"]]) == ["PONG"]
    finally:
        await commands.close()
        await client.aclose()
