"""``/ws`` on one instance: auth, expiry, resume, ping/pong, frame limits, origin, heartbeat, shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os

import asyncpg
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from chainfeed.delivery.hub import Hub
from chainfeed.domain.tokens import issue_token
from chainfeed.web.server import quiet_handshake_lines
from tests.conftest import JWT_SECRET, AppFactory, RunningApp, app_runtime
from tests.delivery_support import (
    client,
    closed_with,
    eventually,
    ready,
    recv_frames,
    recv_json,
    xadd_hand,
)


def ws_errors(kind: str) -> float:
    return REGISTRY.get_sample_value("websocket_errors_total", {"type": kind}) or 0.0


async def stored_items(db: asyncpg.Connection, user_id: int) -> list[int]:
    return [
        row["id"]
        for row in await db.fetch("SELECT id FROM feed_items WHERE user_id = $1 ORDER BY id", user_id)
    ]


async def test_manual_xadd_reaches_user_1(app: RunningApp, redis: Redis, db: asyncpg.Connection) -> None:
    """SPEC: ``XADD feed:stream '*' user_id 1 type test payload '{"test":"data"}'`` reaches user 1's tab."""
    body = await app.register()
    assert body["user"]["id"] == 1
    async with client(app, body["access_token"]) as ws:
        await ready(ws)
        await xadd_hand(redis, 1)
        frame = await recv_json(ws)
    [item_id] = await stored_items(db, 1)
    assert frame == {
        "type": "test",
        "id": item_id,
        "seq": 1,
        "user_id": 1,
        "created_at": frame["created_at"],
        "payload": {"test": "data"},
    }
    row = await db.fetchrow("SELECT type, payload, source_entry_id, published_at FROM feed_items")
    assert row is not None
    assert (row["type"], json.loads(row["payload"])) == ("test", {"test": "data"})
    assert row["source_entry_id"] is not None
    assert row["published_at"] is not None  # the outbox relay must not publish it again


def _bad_token(kind: str) -> str | None:
    """Tokens made when the test runs (made at collection time they would expire mid-suite)."""
    tokens: dict[str, str | None] = {
        "absent": None,
        "empty": "",
        "garbage": "not-a-jwt",
        "wrong key": issue_token(1, secret="another-secret-" + "y" * 40, ttl_seconds=60),
        "expired": issue_token(1, secret=JWT_SECRET, ttl_seconds=60, now=1_000_000),
        "no such user": issue_token(999, secret=JWT_SECRET, ttl_seconds=60),
    }
    return tokens[kind]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("absent", "missing token"),
        ("empty", "missing token"),
        ("garbage", "invalid token"),
        ("wrong key", "invalid token"),
        ("expired", "token expired"),
        ("no such user", "invalid token"),
    ],
)
async def test_auth_failures_close_with_4401_and_a_reason(app: RunningApp, kind: str, reason: str) -> None:
    await app.register()
    before = ws_errors("auth")
    async with client(app, _bad_token(kind)) as ws:
        assert await closed_with(ws) == (4401, reason)
    assert ws_errors("auth") == before + 1


async def test_open_connection_closes_when_its_token_expires(app: RunningApp) -> None:
    user = (await app.register())["user"]
    token = issue_token(user["id"], secret=JWT_SECRET, ttl_seconds=2)
    async with client(app, token) as ws:
        await ready(ws)
        assert await closed_with(ws, within=5) == (4401, "token expired")


async def test_resume_from_the_query_replays_exactly_the_missed_items(
    app: RunningApp, redis: Redis, db: asyncpg.Connection
) -> None:
    """Items made while the user was away come first, oldest first, then live ones."""
    body = await app.register()
    for n in range(5):
        await xadd_hand(redis, 1, json.dumps({"n": n}))
    await eventually(lambda: _count(db, 5))
    ids = await stored_items(db, 1)
    async with client(app, body["access_token"], since=ids[1]) as ws:
        replayed = await recv_frames(ws, 3)
        assert [f["id"] for f in replayed] == ids[2:]
        assert [f["payload"] for f in replayed] == [{"n": 2}, {"n": 3}, {"n": 4}]
        await xadd_hand(redis, 1, json.dumps({"n": 5}))
        [live] = await recv_frames(ws, 1)
        assert live["payload"] == {"n": 5}
        assert live["id"] > ids[-1]


async def test_resume_by_frame_replays_then_continues_live(
    app: RunningApp, redis: Redis, db: asyncpg.Connection
) -> None:
    body = await app.register()
    for n in range(3):
        await xadd_hand(redis, 1, json.dumps({"n": n}))
    await eventually(lambda: _count(db, 3))
    ids = await stored_items(db, 1)
    async with client(app, body["access_token"]) as ws:
        await ready(ws)
        await ws.send(json.dumps({"type": "resume", "since": ids[0]}))
        assert [f["id"] for f in await recv_frames(ws, 2)] == ids[1:]
        await xadd_hand(redis, 1, json.dumps({"n": 3}))
        [live] = await recv_frames(ws, 1)
        assert live["payload"] == {"n": 3}


async def test_resume_while_pushes_keep_coming_leaves_no_gap(
    app: RunningApp, redis: Redis, db: asyncpg.Connection
) -> None:
    """Items committed before, during and after the replay all arrive, in seq order, each once."""
    body = await app.register()
    total = 40

    async def produce() -> None:
        for n in range(total):
            await xadd_hand(redis, 1, json.dumps({"n": n}))
            await asyncio.sleep(0.002)

    producer = asyncio.create_task(produce())
    await eventually(lambda: _count(db, 10))
    async with client(app, body["access_token"], since=0) as ws:
        frames = await recv_frames(ws, total, within=10)
    await producer
    assert [frame["seq"] for frame in frames] == list(range(1, total + 1))
    assert [frame["id"] for frame in frames] == await stored_items(db, 1)


async def test_invalid_since_is_refused(app: RunningApp) -> None:
    body = await app.register()
    async with client(app, body["access_token"], since="yesterday") as ws:
        assert await closed_with(ws) == (4400, "invalid since")


async def test_client_ping_gets_pong_unknown_frames_are_ignored_deflate_is_on(app: RunningApp) -> None:
    body = await app.register()
    async with client(app, body["access_token"]) as ws:
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        await ws.send('{"type":"hello"}')
        await ws.send("not json")
        await ws.send(b"\x00binary")
        await ws.send('{"type":"ping"}')
        assert await recv_json(ws) == {"type": "pong"}


async def test_deflate_keeps_no_state_between_messages_and_big_frames_arrive_whole(
    app: RunningApp, redis: Redis, db: asyncpg.Connection
) -> None:
    """Negotiated without context takeover (no zlib state held per idle connection); a frame over
    the compression threshold (replayed, so compressed) and a small live one decode intact."""
    body = await app.register()
    big = {"memo": "0x" + "ab" * 2000}
    await xadd_hand(redis, 1, json.dumps(big))
    await eventually(lambda: _count(db, 1))
    async with client(app, body["access_token"], since=0) as ws:
        assert ws.response is not None
        negotiated = ws.response.headers["Sec-WebSocket-Extensions"]
        assert "server_no_context_takeover" in negotiated
        assert "client_no_context_takeover" in negotiated
        [replayed] = await recv_frames(ws, 1)
        assert replayed["payload"] == big
        await xadd_hand(redis, 1, json.dumps({"n": 1}))
        [live] = await recv_frames(ws, 1)
        assert live["payload"] == {"n": 1}


async def test_inbound_frame_over_4_kib_closes_with_1009(app: RunningApp) -> None:
    body = await app.register()
    before = ws_errors("protocol")
    async with client(app, body["access_token"]) as ws:
        await ready(ws)
        await ws.send(json.dumps({"type": "ping", "pad": "x" * 5000}))
        code, _ = await closed_with(ws)
    assert code == 1009
    await eventually(lambda: ws_errors("protocol") == before + 1)


async def test_origin_outside_the_allow_list_is_refused(app_factory: AppFactory) -> None:
    app = await app_factory(ws_allowed_origins=("https://feed.example",))
    body = await app.register()
    before = ws_errors("origin")
    async with client(app, body["access_token"], origin="https://evil.example") as ws:
        assert await closed_with(ws) == (4403, "origin not allowed")
    assert ws_errors("origin") == before + 1
    async with client(app, body["access_token"], origin="https://feed.example") as ws:
        await ready(ws)


async def test_heartbeat_keeps_a_live_client_and_drops_a_silent_one(app_factory: AppFactory) -> None:
    """Protocol pings every interval: a client that answers stays; one that does not is closed."""
    app = await app_factory(ws_ping_interval=0.2, ws_pong_timeout=0.3)
    body = await app.register()
    async with client(app, body["access_token"]) as ws:
        await asyncio.sleep(1.0)  # several ping rounds, answered by the client library
        await ready(ws)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws?token={body['access_token']} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    async with asyncio.timeout(5):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        close_code = await _read_until_close(reader)
    writer.close()
    assert close_code == 1011


async def test_shutdown_closes_with_1001(app_factory: AppFactory) -> None:
    app = await app_factory()
    body = await app.register()
    async with client(app, body["access_token"]) as ws:
        await ready(ws)
        app.server.should_exit = True
        assert (await closed_with(ws, within=10))[0] == 1001


async def test_global_cap_refuses_new_connections_with_1013(app_factory: AppFactory) -> None:
    app = await app_factory(ws_max_total=2)
    tokens = [(await app.register())["access_token"] for _ in range(3)]
    before = ws_errors("limit")
    async with client(app, tokens[0]) as first, client(app, tokens[1]) as second:
        await ready(first)
        await ready(second)
        async with client(app, tokens[2]) as third:
            assert (await closed_with(third))[0] == 1013
        assert ws_errors("limit") == before + 1
    await eventually(lambda: _hub(app).total == 0)  # slots come back when connections close
    async with client(app, tokens[2]) as later:
        await ready(later)


async def _read_until_close(reader: asyncio.StreamReader) -> int:
    """Skip server frames (pings) until a close frame; returns its code (unmasked server frames)."""
    while True:
        header = await reader.readexactly(2)
        opcode, length = header[0] & 0x0F, header[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(length)
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big")


async def _count(db: asyncpg.Connection, expected: int) -> bool:
    return int(await db.fetchval("SELECT count(*) FROM feed_items")) >= expected


def _hub(app: RunningApp) -> Hub:
    hub = app_runtime(app).hub
    assert hub is not None
    return hub


async def test_resume_includes_a_lower_id_committed_after_the_clients_last_item(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    """Ids are taken at insert but commits land in any order: item 1 numbered (published) after
    the client saw item 2 comes after it in the feed and must reach it on resume, once."""
    body = await app.register()
    user_id = body["user"]["id"]
    ids = []
    for n, seq in ((0, 2), (1, 1), (2, 3)):
        ids.append(
            await db.fetchval(
                "INSERT INTO feed_items (user_id, payload, published_at, seq) VALUES ($1, $2, now(), $3)"
                " RETURNING id",
                user_id,
                json.dumps({"n": n}),
                seq,
            )
        )
    await db.execute("UPDATE users SET feed_seq = 3 WHERE id = $1", user_id)
    early, seen, later = ids
    assert early < seen < later
    async with client(app, body["access_token"], since=seen) as ws:
        frames = await recv_frames(ws, 2)
    assert [(f["id"], f["seq"]) for f in frames] == [(early, 2), (later, 3)]


async def test_resume_over_several_pages_replays_each_item_once_in_order(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    """Replayed a page at a time: 1,203 items after ``since``, no more, no fewer, no repeats, and
    then ``resumed`` with the count and the last number."""
    body = await app.register()
    user_id = body["user"]["id"]
    ids = [
        row["id"]
        for row in await db.fetch(
            "INSERT INTO feed_items (user_id, payload, published_at, seq)"
            " SELECT $1, jsonb_build_object('n', g), now(), g FROM generate_series(1, 1210) AS g"
            " RETURNING id",
            user_id,
        )
    ]
    await db.execute("UPDATE users SET feed_seq = 1210 WHERE id = $1", user_id)
    async with client(app, body["access_token"], since=ids[6]) as ws:
        frames = await recv_frames(ws, 1203)
        assert await recv_json(ws) == {"type": "resumed", "since": ids[6], "replayed": 1203, "seq": 1210}
        await ready(ws)  # the pong comes next: nothing more was replayed
    assert [f["id"] for f in frames] == sorted(ids)[7:]
    assert [f["seq"] for f in frames] == list(range(8, 1211))


async def test_a_deleted_user_is_refused_with_4401_on_the_next_connect(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    """Auth checks the user on every connect: a valid token of a deleted user no longer opens."""
    body = await app.register()
    async with client(app, body["access_token"], since=0) as ws:
        await ready(ws)
    await db.execute("DELETE FROM users WHERE id = $1", body["user"]["id"])
    async with client(app, body["access_token"], since=0) as ws:
        assert await closed_with(ws) == (4401, "invalid token")


def test_per_connection_handshake_lines_are_dropped_unless_logging_at_debug() -> None:
    """uvicorn's and websockets' INFO lines for every connection go; a refused handshake stays."""
    logger = logging.getLogger("uvicorn.error")

    def record(message: str, *args: str) -> logging.LogRecord:
        return logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, args, None)

    accepted = record('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", "/ws?token=x")
    refused = record('%s - "WebSocket %s" 403', "127.0.0.1:5000", "/ws?token=x")
    try:
        quiet_handshake_lines("info")
        quiet_handshake_lines("info")  # idempotent: one filter
        assert len(logger.filters) == 1
        assert not logger.filter(accepted)
        assert not logger.filter(record("connection open"))
        assert logger.filter(refused)
        quiet_handshake_lines("debug")
        assert logger.filter(accepted)
    finally:
        quiet_handshake_lines("debug")
    assert logger.filters == []


async def test_a_token_seen_before_is_still_refused_once_it_expired(app: RunningApp) -> None:
    """Verified tokens are remembered for reconnects, but never past their expiry."""
    user = (await app.register())["user"]
    token = issue_token(user["id"], secret=JWT_SECRET, ttl_seconds=2)
    async with client(app, token) as ws:
        await ready(ws)
        assert await closed_with(ws, within=5) == (4401, "token expired")
    async with client(app, token) as ws:
        assert await closed_with(ws) == (4401, "token expired")
