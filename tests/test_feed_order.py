"""Feed order: every connection follows its user's feed in seq order, without a gap or a repeat.

Each test forces one way an item used to go missing (issue "Nothing lost, by construction") and
checks what the tab sees. Real Redis, PostgreSQL and uvicorn; items are committed and numbered in
PostgreSQL as the relay leaves them, and their stream entries (or pushes) written as the relay
(or the consumer) writes them, so the test decides which of them get lost on the way.
"""

from __future__ import annotations

import json

import asyncpg
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from chainfeed.domain.frames import encode_frame, pack_push
from chainfeed.names import user_channel
from tests.conftest import AppFactory, RunningApp
from tests.delivery_support import client, eventually, ready, recv_frames, recv_json, xadd_item

STREAM, GROUP = "feed:stream", "feed:consumers"


async def _commit(db: asyncpg.Connection, user_id: int, count: int) -> list[int]:
    """``count`` committed, numbered items of ``user_id`` (as the relay leaves them); their ids."""
    base = await db.fetchval("SELECT feed_seq FROM users WHERE id = $1", user_id)
    ids = [
        await db.fetchval(
            "INSERT INTO feed_items (user_id, payload, published_at, seq) VALUES ($1, $2, now(), $3)"
            " RETURNING id",
            user_id,
            json.dumps({"n": base + n}),
            base + n,
        )
        for n in range(1, count + 1)
    ]
    await db.execute("UPDATE users SET feed_seq = $2 WHERE id = $1", user_id, base + count)
    return ids


def _fills(reason: str) -> float:
    return REGISTRY.get_sample_value("websocket_gap_fills_total", {"reason": reason}) or 0.0


async def _push(redis: Redis, user_id: int, item_id: int, seq: int) -> None:
    """What a consumer PUBLISHes for the item (on the user's channel, every instance listens)."""
    frame = encode_frame(item_id=item_id, seq=seq, user_id=user_id, created_at="2024-05-01T12:00:00+00:00",
                         type_="new_transaction", payload_json=json.dumps({"n": seq}))  # fmt: skip
    await redis.publish(user_channel(user_id), pack_push(item_id, seq, 0, frame))


async def _nothing_more(ws: object) -> None:
    """The next frame is the pong of a ping sent now: nothing else was queued before it."""
    await ready(ws)  # type: ignore[arg-type]


async def test_an_entry_held_by_a_dead_consumer_reaches_the_tab_before_the_next_one(
    app_factory: AppFactory, redis: Redis, db: asyncpg.Connection
) -> None:
    """Loss path 1: a consumer dies holding item 1's entry while item 2 is delivered. The tab gets
    1 then 2 (1 filled from PostgreSQL); when the held entry is claimed and published later, the
    tab drops it, and a tab that comes back from item 2 is owed nothing."""
    app = await app_factory(claim_idle_ms=300)
    body = await app.register()
    user_id, token = body["user"]["id"], body["access_token"]
    async with client(app, token, since=0) as ws:
        await ready(ws)
        first, second = await _commit(db, user_id, 2)
        gaps = _fills("gap")
        # XADD and the dead consumer's read in one MULTI: blocked readers (the app's consumer) are
        # served only after it, so the dead one holds the entry for sure.
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(STREAM, {"user_id": str(user_id), "type": "new_transaction", "payload": '{"n": 1}',
                               "feed_item_id": str(first), "seq": "1"})  # fmt: skip
            pipe.xreadgroup(GROUP, "dead-consumer", {STREAM: ">"}, count=1)
            _, stolen = await pipe.execute()
        assert stolen, "the dead consumer holds item 1's entry"
        await xadd_item(redis, user_id, second, {"n": 2}, seq=2)
        frames = await recv_frames(ws, 2)
        assert [(f["id"], f["seq"]) for f in frames] == [(first, 1), (second, 2)]
        assert _fills("gap") > gaps
        # The claimer takes the held entry over and publishes it: this tab has passed it.
        await eventually(lambda: _acknowledged(redis), within=10)
        await _nothing_more(ws)
    async with client(app, token, since=second) as back:
        assert await recv_json(back) == {"type": "resumed", "since": second, "replayed": 0, "seq": 2}


async def _acknowledged(redis: Redis) -> bool:
    summary = await redis.xpending(STREAM, GROUP)
    return int(summary["pending"]) == 0


async def test_a_push_lost_on_the_channel_is_filled_before_the_next_one(
    app: RunningApp, redis: Redis, db: asyncpg.Connection
) -> None:
    """Loss path 2 forced: pushes 1 and 3 arrive, push 2 never does (lost while PUB/SUB was down,
    and 3 came first after it was back). The tab sees 1, 2, 3: never [1, 3]."""
    body = await app.register()
    user_id = body["user"]["id"]
    async with client(app, body["access_token"], since=0) as ws:
        await ready(ws)
        ids = await _commit(db, user_id, 3)
        await _push(redis, user_id, ids[0], 1)
        await _push(redis, user_id, ids[2], 3)
        frames = await recv_frames(ws, 3)
        await _nothing_more(ws)
    assert [(f["id"], f["seq"]) for f in frames] == list(zip(ids, [1, 2, 3], strict=True))


async def test_after_a_pubsub_drop_every_tab_catches_up_from_its_own_position(
    app: RunningApp, redis: Redis, db: asyncpg.Connection
) -> None:
    """The PUB/SUB connection is killed and an item is pushed while it is down (lost for good);
    no later item comes. The tab still gets it: the resubscription makes it read what follows its
    position, whatever raced with the reconnection."""
    body = await app.register()
    user_id = body["user"]["id"]
    async with client(app, body["access_token"], since=0) as ws:
        await ready(ws)
        (early,) = await _commit(db, user_id, 1)
        await _push(redis, user_id, early, 1)
        assert (await recv_frames(ws, 1))[0]["seq"] == 1
        resyncs = _fills("resync")
        (lost,) = await _commit(db, user_id, 1)
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await _push(redis, user_id, lost, 2)  # nobody is subscribed right now
        frames = await recv_frames(ws, 1, within=10)
        await _nothing_more(ws)
    assert [(f["id"], f["seq"]) for f in frames] == [(lost, 2)]
    assert _fills("resync") > resyncs


async def test_an_entry_redis_lost_reaches_the_tab_with_the_users_next_item(
    app: RunningApp, redis: Redis, db: asyncpg.Connection
) -> None:
    """Loss path 7: item 1 is committed but its entry never reaches the stream's consumers (a
    failover that had not replicated it, a restart without AOF). With item 2 it arrives, first."""
    body = await app.register()
    user_id = body["user"]["id"]
    async with client(app, body["access_token"], since=0) as ws:
        await ready(ws)
        first, second = await _commit(db, user_id, 2)
        await xadd_item(redis, user_id, second, {"n": 2}, seq=2)  # item 1's entry is gone
        frames = await recv_frames(ws, 2)
        await _nothing_more(ws)
    assert [(f["id"], f["seq"]) for f in frames] == [(first, 1), (second, 2)]


async def test_a_new_tab_without_history_resumes_from_zero_and_misses_nothing(
    app: RunningApp, redis: Redis, db: asyncpg.Connection
) -> None:
    """Loss path 3, server side: what the page now does for an empty feed (since=0). Items
    committed between the history request and the socket arrive by replay, then ``resumed``."""
    body = await app.register()
    user_id = body["user"]["id"]
    history = await app.http.get("/api/feed", headers=app.auth(body["access_token"]))
    assert history.json()["items"] == []
    ids = await _commit(db, user_id, 2)  # committed after the page read its history
    async with client(app, body["access_token"], since=0) as ws:
        frames = await recv_frames(ws, 2)
        await _nothing_more(ws)
    assert [f["id"] for f in frames] == ids


async def test_since_of_another_users_item_is_refused_with_4400(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    """A cursor must name the user's own item: another user's id closes with 4400."""
    alice, bob = await app.register(), await app.register()
    (bobs,) = await _commit(db, bob["user"]["id"], 1)
    async with client(app, alice["access_token"], since=bobs) as ws:
        await ws.wait_closed()
    assert (ws.close_code, ws.close_reason) == (4400, "invalid since")


async def test_an_entry_naming_an_item_without_its_number_is_pushed_as_it_comes(
    app: RunningApp, redis: Redis
) -> None:
    """An older relay's entry (during an upgrade), or another producer's, has ``feed_item_id`` but
    no ``seq``: it reaches the tab at once, outside the order (``seq`` null), with no query."""
    body = await app.register()
    user_id = body["user"]["id"]
    async with client(app, body["access_token"], since=0) as ws:
        await ready(ws)
        await redis.xadd(STREAM, {"user_id": str(user_id), "type": "new_transaction",
                                  "payload": '{"n": 1}', "feed_item_id": "777"})  # fmt: skip
        (frame,) = await recv_frames(ws, 1)
        await _nothing_more(ws)
    assert (frame["id"], frame["seq"]) == (777, None)
