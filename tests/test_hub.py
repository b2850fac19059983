"""The hub across instances: fan-out to every tab wherever it lives, per-user cap, slow consumers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from typing import Any

from prometheus_client import REGISTRY
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from chainfeed.names import INSTANCES_KEY, user_connections_key
from tests.conftest import AppFactory, RunningApp
from tests.delivery_support import client, closed_with, eventually, ready, recv_frames, recv_json, xadd_item


def ws_errors(kind: str) -> float:
    return REGISTRY.get_sample_value("websocket_errors_total", {"type": kind}) or 0.0


async def open_tabs(
    stack: contextlib.AsyncExitStack, app: RunningApp, token: str, count: int
) -> list[ClientConnection]:
    """``count`` live tabs of one user on ``app``, opened one after the other (oldest first)."""
    tabs = []
    for _ in range(count):
        ws = await stack.enter_async_context(client(app, token))
        await ready(ws)
        tabs.append(ws)
    return tabs


async def all_receive(redis: Redis, user_id: int, item_id: int, tabs: list[ClientConnection]) -> None:
    await xadd_item(redis, user_id, item_id, {"n": item_id})
    for ws in tabs:
        assert [f["id"] for f in await recv_frames(ws, 1)] == [item_id]


async def test_a_user_on_instance_b_gets_every_push_consumed_by_instance_a(
    app_factory: AppFactory, redis: Redis
) -> None:
    """B's consumer reads a stream nobody writes to, so A consumes every entry; B only holds the tab."""
    a = await app_factory(consumer_name="instance-a")
    b = await app_factory(consumer_name="instance-b", stream="feed:stream:elsewhere")
    body = await a.register()
    user_id = body["user"]["id"]
    async with client(b, body["access_token"]) as ws:
        await ready(ws)
        for n in range(1, 31):
            await xadd_item(redis, user_id, n, {"n": n})
        frames = await recv_frames(ws, 30)
    assert [f["id"] for f in frames] == list(range(1, 31))
    assert frames[0] == {
        "type": "new_transaction",
        "id": 1,
        "seq": 1,
        "user_id": user_id,
        "created_at": "2024-05-01T12:00:00+00:00",
        "payload": {"n": 1},
    }
    consumers = {c["name"]: c for c in await redis.xinfo_consumers("feed:stream", "feed:consumers")}
    assert set(consumers) == {"instance-a"}
    assert consumers["instance-a"]["pending"] == 0


async def test_three_tabs_all_receive_every_push(app_factory: AppFactory, redis: Redis) -> None:
    """Two tabs on one instance and one on another: each gets every push, once."""
    a = await app_factory(consumer_name="instance-a")
    b = await app_factory(consumer_name="instance-b")
    body = await a.register()
    async with contextlib.AsyncExitStack() as stack:
        tabs = await open_tabs(stack, a, body["access_token"], 2) + await open_tabs(
            stack, b, body["access_token"], 1
        )
        for n in range(1, 6):
            await xadd_item(redis, body["user"]["id"], n, {"n": n})
        for ws in tabs:
            assert [f["id"] for f in await recv_frames(ws, 5)] == [1, 2, 3, 4, 5]
        for ws in tabs:  # and nothing more: no instance pushed twice
            with contextlib.suppress(TimeoutError):
                extra = await recv_json(ws, within=0.3)
                raise AssertionError(f"unexpected frame {extra}")


async def test_sixth_connection_closes_the_oldest_with_4429(app: RunningApp, redis: Redis) -> None:
    body = await app.register()
    before = ws_errors("limit")
    async with contextlib.AsyncExitStack() as stack:
        tabs = await open_tabs(stack, app, body["access_token"], 6)
        assert await closed_with(tabs[0]) == (4429, "too many connections")
        await all_receive(redis, body["user"]["id"], 1, tabs[1:])
    assert ws_errors("limit") == before + 1


async def test_per_user_cap_holds_across_instances(app_factory: AppFactory, redis: Redis) -> None:
    """3 tabs on A and 2 on B; the 6th (on B) closes A's oldest, a 7th (on A) the next oldest."""
    a = await app_factory(consumer_name="instance-a")
    b = await app_factory(consumer_name="instance-b")
    body = await a.register()
    token, user_id = body["access_token"], body["user"]["id"]
    async with contextlib.AsyncExitStack() as stack:
        on_a = await open_tabs(stack, a, token, 3)
        on_b = await open_tabs(stack, b, token, 2)
        sixth = await open_tabs(stack, b, token, 1)
        assert await closed_with(on_a[0]) == (4429, "too many connections")
        seventh = await open_tabs(stack, a, token, 1)
        assert await closed_with(on_a[1]) == (4429, "too many connections")
        await all_receive(redis, user_id, 1, [on_a[2], *on_b, *sixth, *seventh])
        assert await redis.zcard(user_connections_key(user_id)) == 5


async def test_connections_of_a_vanished_instance_do_not_count(app: RunningApp, redis: Redis) -> None:
    """Tabs registered by an instance that stopped beating its heartbeat are not the oldest to close."""
    body = await app.register()
    token, user_id = body["access_token"], body["user"]["id"]
    await redis.zadd(INSTANCES_KEY, {"crashed-instance": 1})
    await redis.zadd(user_connections_key(user_id), {f"crashed-instance|{n}": n for n in range(1, 6)})
    async with contextlib.AsyncExitStack() as stack:
        tabs = await open_tabs(stack, app, token, 5)
        await all_receive(redis, user_id, 1, tabs)
    await eventually(lambda: _no_connections(redis, user_id))


async def test_slow_consumer_is_closed_with_4408_and_others_are_not_slowed(
    app_factory: AppFactory, redis: Redis
) -> None:
    """A tab that never reads fills its queue and is closed; another user's push still arrives at once."""
    app = await app_factory(ws_send_queue=4)
    slow_user, fast_user = await app.register(), await app.register()
    blob = base64.b64encode(os.urandom(48 * 1024)).decode()  # incompressible, ~64 KiB a frame
    before = ws_errors("slow_consumer")
    options: dict[str, Any] = {"max_queue": 1, "compression": None}
    async with (
        client(app, slow_user["access_token"], **options) as slow,
        client(app, fast_user["access_token"]) as fast,
    ):
        await ready(slow)
        await ready(fast)
        item_id = 0
        async with asyncio.timeout(20):
            while ws_errors("slow_consumer") == before:
                pipe = redis.pipeline(transaction=False)
                for _ in range(20):
                    item_id += 1
                    pipe.xadd(
                        "feed:stream",
                        {
                            "user_id": str(slow_user["user"]["id"]),
                            "payload": f'{{"b":"{blob}"}}',
                            "feed_item_id": str(item_id),
                            "seq": str(item_id),
                        },
                    )
                await pipe.execute()
                await asyncio.sleep(0.05)
        started = time.monotonic()
        await xadd_item(redis, fast_user["user"]["id"], 1_000_000, {"fast": True})
        assert (await recv_json(fast, within=2))["id"] == 1_000_000
        fast_latency = time.monotonic() - started
        assert await closed_with(slow, within=15) == (4408, "slow consumer")
    assert fast_latency < 0.5, fast_latency
    assert ws_errors("slow_consumer") == before + 1
    await eventually(lambda: _zero_pending(redis))


async def _zero_pending(redis: Redis) -> bool:
    return int((await redis.xpending("feed:stream", "feed:consumers"))["pending"]) == 0


async def _no_connections(redis: Redis, user_id: int) -> bool:
    return int(await redis.zcard(user_connections_key(user_id))) == 0
