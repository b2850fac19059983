"""POST /webhooks/alchemy end to end on real servers: what Alchemy, users and the SRE see.

Each test asserts on answers, rows, stream entries and metric values, never on internals.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
from redis.asyncio import Redis

from chainfeed.observability.logging import configure_logging
from tests.conftest import RunningApp
from tests.ingest_support import (
    Metrics,
    activity,
    address,
    eventually,
    post_webhook,
    sign,
    stream_entries,
    tx_hash,
    watch,
    webhook,
)

ME, ALICE, BOB, CAROL = address(0xA11CE0), address(0xA11CE1), address(0xB0B), address(0xCA201)


async def _user_watching(app: RunningApp, *addresses: str) -> tuple[int, str]:
    session = await app.register()
    for watched in addresses:
        await watch(app, session["access_token"], watched)
    return session["user"]["id"], session["access_token"]


async def _count(db: asyncpg.Connection, table: str) -> int:
    return int(await db.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608 - test-owned names


async def _nothing_written(db: asyncpg.Connection) -> bool:
    return all([await _count(db, t) == 0 for t in ("webhook_events", "transactions", "feed_items")])


async def _all_published(db: asyncpg.Connection) -> bool:
    return int(await db.fetchval("SELECT count(*) FROM feed_outbox")) == 0


async def _stream_has(redis: Redis, count: int) -> bool:
    return len(await stream_entries(redis)) >= count


async def test_every_category_reaches_the_watcher_and_the_stream(
    app: RunningApp, db: asyncpg.Connection, redis: Redis
) -> None:
    """external, internal, token (ERC-20), erc721 and erc1155: one feed item each, in payload order."""
    user_id, _ = await _user_watching(app, ME)
    metrics = Metrics()
    payload = webhook(
        activity("external", frm=ME, to=ALICE, asset="ETH", value=0.5),
        activity("internal", frm=BOB, to=ME, trace="call_0_1", value=0.25),
        activity("token", frm=ALICE, to=ME, log_index=7, asset="USDC", value=293.092129),
        activity("erc721", frm=ME, to=ME, log_index=8, asset="BAYC", token_id="0x1f"),
        activity("erc1155", frm=CAROL, to=ME, log_index=9, asset=None, token_id="0x2a"),
    )
    response = await post_webhook(app, payload)
    assert response.status_code == 200, response.text
    assert response.json() == {"activities": 5, "new_feed_items": 5}

    rows = await db.fetch("SELECT id, user_id, type, payload, created_at FROM feed_items ORDER BY id")
    payloads = [json.loads(row["payload"]) for row in rows]
    assert [p["category"] for p in payloads] == ["external", "internal", "token", "erc721", "erc1155"]
    assert [p["direction"] for p in payloads] == ["out", "in", "in", "self", "in"]
    assert [p["counterparty"] for p in payloads] == [ALICE, BOB, ALICE, ME, CAROL]
    assert {p["address"] for p in payloads} == {ME}
    assert [p["token_id"] for p in payloads] == [None, None, None, "0x1f", "0x2a"]
    assert [p["log_index"] for p in payloads] == [None, None, 7, 8, 9]
    assert payloads[0]["value"] == 0.5
    assert payloads[0]["hash"] == payload["event"]["activity"][0]["hash"]
    assert all(row["user_id"] == user_id and row["type"] == "new_transaction" for row in rows)

    await eventually(lambda: _stream_has(redis, 5), what="5 stream entries")
    entries = await stream_entries(redis)
    assert [int(e["feed_item_id"]) for e in entries] == [row["id"] for row in rows]
    for entry, row, stored in zip(entries, rows, payloads, strict=True):
        assert entry["user_id"] == str(user_id)
        assert entry["type"] == "new_transaction"
        assert json.loads(entry["payload"]) == stored
        assert entry["created_at"] == row["created_at"].isoformat()
        assert entry["traceparent"].startswith("00-")
    await eventually(lambda: _all_published(db), what="the outbox empty")

    assert metrics.delta("webhook_requests_total", outcome="accepted") == 1
    for category in ("external", "internal", "token", "erc721", "erc1155"):
        assert metrics.delta("webhook_activities_total", category=category) == 1
    assert metrics.delta("feed_items_created_total") == 5
    assert metrics.delta("chainfeed_stage_duration_seconds_count", stage="ingest") == 1
    assert metrics.delta("chainfeed_stage_duration_seconds_count", stage="db_write") == 1
    await eventually(
        lambda: _true(metrics.delta("chainfeed_stage_duration_seconds_count", stage="publish") >= 1)
    )


async def _true(value: bool) -> bool:
    return value


async def test_every_watcher_of_either_side_gets_one_item(app: RunningApp, db: asyncpg.Connection) -> None:
    """The sender's and the receiver's watchers each get it; a user watching both sides gets it once."""
    sender_watcher, _ = await _user_watching(app, ALICE)
    receiver_watcher, _ = await _user_watching(app, BOB)
    both, _ = await _user_watching(app, ALICE, BOB)
    await _user_watching(app, CAROL)  # not involved
    response = await post_webhook(app, webhook(activity("external", frm=ALICE, to=BOB)))
    assert response.json() == {"activities": 1, "new_feed_items": 3}
    rows = await db.fetch("SELECT user_id, payload FROM feed_items ORDER BY user_id")
    seen = {row["user_id"]: json.loads(row["payload"]) for row in rows}
    assert set(seen) == {sender_watcher, receiver_watcher, both}
    assert (seen[sender_watcher]["direction"], seen[sender_watcher]["counterparty"]) == ("out", BOB)
    assert (seen[receiver_watcher]["direction"], seen[receiver_watcher]["counterparty"]) == ("in", ALICE)
    assert (seen[both]["direction"], seen[both]["address"]) == ("out", ALICE)


async def test_activity_nobody_watches_is_stored_without_feed_items(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    response = await post_webhook(app, webhook(activity("external", frm=ALICE, to=BOB)))
    assert response.json() == {"activities": 1, "new_feed_items": 0}
    assert (await _count(db, "transactions"), await _count(db, "feed_items")) == (1, 0)


async def test_missing_and_null_fields_are_accepted(app: RunningApp, db: asyncpg.Connection) -> None:
    """Alchemy omits null fields; contract creations have no toAddress. Such activity is still stored."""
    await _user_watching(app, ME)
    sparse = {"hash": tx_hash(), "category": "external", "fromAddress": ME}
    nulls = {
        "hash": tx_hash(),
        "category": "token",
        "fromAddress": None,
        "toAddress": ME,
        "blockNum": None,
        "value": None,
        "asset": None,
        "rawContract": None,
        "log": None,
        "erc721TokenId": None,
        "erc1155Metadata": None,
        "typeTraceAddress": None,
    }
    response = await post_webhook(app, webhook(sparse, nulls))
    assert response.json() == {"activities": 2, "new_feed_items": 2}
    payloads = [
        json.loads(r["payload"]) for r in await db.fetch("SELECT payload FROM feed_items ORDER BY id")
    ]
    assert (payloads[0]["to"], payloads[0]["direction"], payloads[0]["counterparty"]) == (None, "out", None)
    assert (payloads[1]["from"], payloads[1]["block_num"], payloads[1]["value"]) == (None, None, None)
    # Redelivered as is: the fallback natural keys hold, nothing doubles.
    again = await post_webhook(app, webhook(sparse, nulls))
    assert again.json() == {"activities": 2, "new_feed_items": 0}
    assert await _count(db, "transactions") == 2


async def test_capacity_limit_notice_is_accepted_and_creates_nothing(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    metrics = Metrics()
    notice = {
        "webhookId": "wh_127lzhz0dfwwimwe",
        "id": "whevt_55i2al4sc2ivp1m8",
        "createdAt": "2022-12-05T23:43:16.379Z",
        "type": "ADDRESS_ACTIVITY",
        "event": {"error": "Monthly capacity limit exceeded. Visit the dashboard to upgrade."},
    }
    response = await post_webhook(app, notice)
    assert response.status_code == 200
    assert response.json() == {"activities": 0, "new_feed_items": 0}
    assert await _nothing_written(db)
    assert metrics.delta("webhook_requests_total", outcome="accepted") == 1


async def test_duplicate_delivery_creates_one_feed_item(
    app: RunningApp, db: asyncpg.Connection, redis: Redis
) -> None:
    """Alchemy retries: the same delivery twice (or three times at once) yields one item, one entry."""
    await _user_watching(app, ME)
    payload = webhook(activity("token", frm=ALICE, to=ME, log_index=3))
    first = await post_webhook(app, payload)
    assert first.json() == {"activities": 1, "new_feed_items": 1}
    again = [await post_webhook(app, payload) for _ in range(2)]
    assert [r.json() for r in again] == [{"activities": 1, "new_feed_items": 0}] * 2
    assert await _count(db, "feed_items") == 1
    assert await db.fetchval("SELECT deliveries FROM webhook_events WHERE id = $1", payload["id"]) == 3
    await eventually(lambda: _stream_has(redis, 1))
    assert len(await stream_entries(redis)) == 1


async def test_concurrent_duplicates_create_one_feed_item(app: RunningApp, db: asyncpg.Connection) -> None:
    """Retries racing each other (different event ids, same transfers) still make one item each."""
    await _user_watching(app, ME)
    transfers = [activity("token", frm=ALICE, to=ME, hash_=tx_hash(), log_index=i) for i in range(20)]
    responses = await asyncio.gather(*(post_webhook(app, webhook(*transfers)) for _ in range(5)))
    assert all(r.status_code == 200 for r in responses)
    assert sum(r.json()["new_feed_items"] for r in responses) == 20
    assert (await _count(db, "transactions"), await _count(db, "feed_items")) == (20, 20)


async def test_same_transaction_split_across_payloads(app: RunningApp, db: asyncpg.Connection) -> None:
    """One tx's transfers arrive over two deliveries, overlapping: each transfer is stored once."""
    await _user_watching(app, ME)
    tx = tx_hash()
    external = activity("external", frm=ME, to=ALICE, hash_=tx)
    first_log = activity("token", frm=ME, to=BOB, hash_=tx, log_index=1)
    second_log = activity("token", frm=CAROL, to=ME, hash_=tx, log_index=2)
    internal = activity("internal", frm=ALICE, to=ME, hash_=tx, trace="call_0_3")
    one = await post_webhook(app, webhook(external, first_log))
    two = await post_webhook(app, webhook(first_log, second_log, internal))
    assert one.json() == {"activities": 2, "new_feed_items": 2}
    assert two.json() == {"activities": 3, "new_feed_items": 2}
    keys = await db.fetch("SELECT transfer_key FROM transactions WHERE hash = $1 ORDER BY transfer_key", tx)
    assert [r["transfer_key"] for r in keys] == ["external", "log:1", "log:2", "trace:call_0_3"]
    assert await _count(db, "feed_items") == 4


async def test_transfer_first_seen_removed_notifies_nobody(app: RunningApp, db: asyncpg.Connection) -> None:
    await _user_watching(app, ME)
    response = await post_webhook(
        app, webhook(activity("token", frm=ALICE, to=ME, log_index=1, removed=True))
    )
    assert response.json() == {"activities": 1, "new_feed_items": 0}
    assert await db.fetchval("SELECT removed FROM transactions") is True


async def test_bad_or_missing_signature_is_401_and_writes_nothing(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    await _user_watching(app, ME)
    metrics = Metrics()
    payload = webhook(activity("external", frm=ALICE, to=ME))
    body = json.dumps(payload).encode()
    unsigned = await post_webhook(app, payload, key=None)
    wrong_key = await post_webhook(app, payload, key="whsec_someone_else")
    tampered = await app.http.post(
        "/webhooks/alchemy",
        content=body.replace(b"1.5", b"9.5"),
        headers={"X-Alchemy-Signature": sign(body)},
    )
    for response in (unsigned, wrong_key, tampered):
        assert response.status_code == 401, response.text
    assert unsigned.json() == {"error": "missing X-Alchemy-Signature"}
    assert wrong_key.json() == {"error": "invalid X-Alchemy-Signature"}
    assert await _nothing_written(db)
    assert metrics.delta("webhook_requests_total", outcome="bad_signature") == 3
    assert metrics.delta("webhook_requests_total", outcome="accepted") == 0


async def test_only_a_body_that_is_not_a_delivery_is_400(app: RunningApp, db: asyncpg.Connection) -> None:
    """Content problems inside a delivery are quarantined (tests/test_quarantine.py); 400 is for
    bodies that are no Alchemy delivery at all, with a message saying what is wrong."""
    metrics = Metrics()
    not_json = await post_webhook(app, b"{not json")
    no_event = await post_webhook(app, {"id": "whevt_x", "webhookId": "wh_1"})
    event_not_object = await post_webhook(app, {"id": "whevt_y", "event": "ADDRESS_ACTIVITY"})
    no_id = await post_webhook(app, {"event": {"network": "ETH_MAINNET", "activity": []}})
    for response in (not_json, no_event, event_not_object, no_id):
        assert response.status_code == 400, response.text
    assert "not valid JSON" in not_json.json()["error"]
    assert no_event.json()["error"] == "malformed webhook: Object missing required field `event`"
    assert "at `$.event`" in event_not_object.json()["error"]
    assert no_id.json()["error"] == "malformed webhook: Object missing required field `id`"
    assert await _nothing_written(db)
    assert metrics.delta("webhook_requests_total", outcome="malformed") == 4


async def test_too_large_is_413_and_counted(app_factory: Any, db: asyncpg.Connection) -> None:
    """Over CHAINFEED's body limit: refused while reading, whether Content-Length says so or not."""
    app = await app_factory(webhook_max_bytes=2048)
    metrics = Metrics()
    big = webhook(*(activity("external", frm=ALICE, to=BOB) for _ in range(20)))
    body = json.dumps(big).encode()
    assert len(body) > 2048
    announced = await post_webhook(app, body)

    async def chunks() -> Any:
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    streamed = await app.http.post(
        "/webhooks/alchemy", content=chunks(), headers={"X-Alchemy-Signature": "0"}
    )
    assert (announced.status_code, streamed.status_code) == (413, 413)
    assert await _nothing_written(db)
    assert metrics.delta("webhook_requests_total", outcome="too_large") == 2
    # Just under the limit is fine.
    small = await post_webhook(app, webhook(activity("external", frm=ALICE, to=BOB)))
    assert small.status_code == 200


async def test_one_log_event_per_webhook_without_the_signature(app: RunningApp, capfd: Any) -> None:
    """The summary line carries the event id and counts; the signature never appears in logs."""
    configure_logging(fmt="json", level="info")
    payload = webhook(activity("external", frm=ALICE, to=BOB), event_id="whevt_logged_once")
    body = json.dumps(payload).encode()
    signature = sign(body)
    response = await app.http.post(
        "/webhooks/alchemy", content=body, headers={"X-Alchemy-Signature": signature}
    )
    assert response.status_code == 200
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if "whevt_logged_once" in line]
    assert len(lines) == 1
    assert lines[0]["event"] == "webhook ingested"
    assert (lines[0]["activities"], lines[0]["new_feed_items"]) == (1, 0)
    assert signature not in json.dumps(lines)


async def test_a_user_past_the_per_minute_budget_gets_no_more_items_others_are_unaffected(
    app_factory: Any, db: asyncpg.Connection
) -> None:
    """A watcher of a hot contract: at most CHAINFEED_FEED_ITEMS_PER_USER_MINUTE items a minute
    (here 3); the rest of the transfers are stored without an item for them, and counted."""
    app = await app_factory(feed_items_per_user_minute=3)
    metrics = Metrics()
    _, hot_token = await _user_watching(app, ME)
    await _user_watching(app, BOB)
    first = await post_webhook(app, webhook(*(activity("external", frm=ALICE, to=ME) for _ in range(5))))
    assert first.json() == {"activities": 5, "new_feed_items": 3}
    second = await post_webhook(
        app, webhook(activity("external", frm=ALICE, to=ME), activity("external", frm=ALICE, to=BOB))
    )
    assert second.json() == {"activities": 2, "new_feed_items": 1}  # BOB's; ME is still past it
    assert await _count(db, "transactions") == 7
    assert metrics.delta("feed_items_suppressed_total") == 3
    feed = (await app.http.get("/api/feed", headers={"Authorization": f"Bearer {hot_token}"})).json()["items"]
    assert len(feed) == 3
    # A new minute starts a new budget.
    await db.execute("UPDATE feed_budget SET window_start = window_start - interval '1 minute'")
    third = await post_webhook(app, webhook(activity("external", frm=ALICE, to=ME)))
    assert third.json()["new_feed_items"] == 1
