"""Re-orgs on real servers, seen from a watcher's open tab: a transfer removed by a re-org (or
included again) reaches the tab as a ``transaction_updated`` frame naming its item; copies for a
block the transfer has left change nothing; a transfer first seen removed gets its item when it
is included elsewhere. Each order of notices below is one Alchemy can produce (a 503 during an
outage delays the original, retries arrive late)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from websockets.asyncio.client import ClientConnection

from tests.conftest import RunningApp
from tests.delivery_support import client, ready, recv_frames
from tests.ingest_support import (
    BLOCK_HASH,
    OTHER_BLOCK_HASH,
    activity,
    address,
    post_webhook,
    tx_hash,
    watch,
    webhook,
)

ME, ALICE = address(0xA11CE0), address(0xA11CE1)
THIRD_BLOCK_HASH = "0x" + "cc" * 32


async def _watcher(app: RunningApp) -> str:
    session = await app.register()
    await watch(app, session["access_token"], ME)
    return str(session["access_token"])


def _transfer(
    tx: str, *, removed: bool = False, block: str = BLOCK_HASH, number: int = 0xDF34A3
) -> dict[str, Any]:
    return activity("token", frm=ALICE, to=ME, hash_=tx, log_index=4, removed=removed, block_hash=block,
                    block_num=number)  # fmt: skip


async def _post(app: RunningApp, *activities: dict[str, Any]) -> dict[str, Any]:
    response = await post_webhook(app, webhook(*activities))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _next_push_is(ws: ClientConnection, app: RunningApp) -> dict[str, Any]:
    """Post a marker transfer and return the pushes up to it: proves nothing else was pushed."""
    marker = tx_hash()
    await _post(app, activity("external", frm=ALICE, to=ME, hash_=marker))
    frames = await recv_frames(ws, 1)
    assert frames[0]["payload"]["hash"] == marker, f"an unexpected push came first: {frames[0]}"
    return frames[0]


async def _row(db: asyncpg.Connection, tx: str) -> tuple[bool, str]:
    row = await db.fetchrow("SELECT removed, block_hash FROM transactions WHERE hash = $1", tx)
    assert row is not None
    return row["removed"], row["block_hash"]


async def test_removal_and_reinclusion_reach_the_tab_as_updates_of_the_item(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    token = await _watcher(app)
    tx = tx_hash()
    async with client(app, token) as ws:
        await ready(ws)
        assert (await _post(app, _transfer(tx)))["new_feed_items"] == 1
        (pushed,) = await recv_frames(ws, 1)
        assert (pushed["type"], pushed["payload"]["removed"]) == ("new_transaction", False)

        assert (await _post(app, _transfer(tx, removed=True)))["new_feed_items"] == 1
        (removal,) = await recv_frames(ws, 1)
        assert removal["type"] == "transaction_updated"
        assert (removal["ref"], removal["seq"]) == (pushed["id"], pushed["seq"] + 1)
        assert (removal["payload"]["removed"], removal["payload"]["hash"]) == (True, tx)
        assert removal["payload"]["direction"] == "in"  # the watcher's side, as on the item

        # Alchemy retries the original (its first answer was lost): the block was left, nothing moves.
        assert (await _post(app, _transfer(tx)))["new_feed_items"] == 0
        await _next_push_is(ws, app)
        assert await _row(db, tx) == (True, BLOCK_HASH)

        moved = _transfer(tx, block=OTHER_BLOCK_HASH, number=0xDF34A4)
        assert (await _post(app, moved))["new_feed_items"] == 1
        (restored,) = await recv_frames(ws, 1)
        assert (restored["type"], restored["ref"]) == ("transaction_updated", pushed["id"])
        assert restored["payload"]["removed"] is False
        assert (restored["payload"]["block_hash"], restored["payload"]["block_num"]) == (
            OTHER_BLOCK_HASH,
            0xDF34A4,
        )

        # A late copy of the original block, and a repeat of the re-inclusion: nothing changes.
        assert (await _post(app, _transfer(tx), moved))["new_feed_items"] == 0
        await _next_push_is(ws, app)
    assert await _row(db, tx) == (False, OTHER_BLOCK_HASH)
    # The item itself shows the current state (REST and resume read it), and nothing is doubled.
    item = await db.fetchrow("SELECT payload FROM feed_items WHERE id = $1", pushed["id"])
    assert item is not None
    assert json.loads(item["payload"])["block_hash"] == OTHER_BLOCK_HASH
    kinds = await db.fetch(
        "SELECT type, ref FROM feed_items"
        " WHERE transaction_id = (SELECT id FROM transactions WHERE hash = $1) ORDER BY id",
        tx,
    )
    assert [(r["type"], r["ref"]) for r in kinds] == [
        ("new_transaction", None),
        ("transaction_updated", pushed["id"]),
        ("transaction_updated", pushed["id"]),
    ]


async def test_a_transfer_first_seen_removed_gets_its_item_when_included_elsewhere(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    """The original delivery got a 503; the removal arrives first, then the retried original
    (stale: its block was left), then the inclusion in the new block: one new item, pushed once."""
    token = await _watcher(app)
    tx = tx_hash()
    async with client(app, token) as ws:
        await ready(ws)
        assert (await _post(app, _transfer(tx, removed=True)))["new_feed_items"] == 0
        assert (await _post(app, _transfer(tx)))["new_feed_items"] == 0
        assert await _row(db, tx) == (True, BLOCK_HASH)
        assert (await _post(app, _transfer(tx, block=OTHER_BLOCK_HASH)))["new_feed_items"] == 1
        (item,) = await recv_frames(ws, 1)
        assert (item["type"], item["payload"]["removed"], item["payload"]["block_hash"]) == (
            "new_transaction", False, OTHER_BLOCK_HASH)  # fmt: skip
        assert "ref" not in item
        assert (await _post(app, _transfer(tx, block=OTHER_BLOCK_HASH)))["new_feed_items"] == 0
        await _next_push_is(ws, app)
    assert await db.fetchval("SELECT count(*) FROM feed_items WHERE payload->>'hash' = $1", tx) == 1


async def test_a_removal_from_another_block_is_remembered_not_applied(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    """Notices out of order: mined in A, then "removed from B" (B's inclusion not seen yet), then
    B's inclusion arrives late: the transfer stays in A, unremoved; no update is pushed."""
    token = await _watcher(app)
    tx = tx_hash()
    async with client(app, token) as ws:
        await ready(ws)
        await _post(app, _transfer(tx))
        await recv_frames(ws, 1)
        assert (await _post(app, _transfer(tx, removed=True, block=THIRD_BLOCK_HASH)))["new_feed_items"] == 0
        assert (await _post(app, _transfer(tx, block=THIRD_BLOCK_HASH)))["new_feed_items"] == 0
        await _next_push_is(ws, app)
    assert await _row(db, tx) == (False, BLOCK_HASH)


async def test_a_user_who_stopped_watching_still_gets_the_update_of_an_item_in_the_feed(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    session = await app.register()
    token = session["access_token"]
    await watch(app, token, ME)
    tx = tx_hash()
    await _post(app, _transfer(tx))
    response = await app.http.delete(f"/api/addresses/{ME}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 204
    assert (await _post(app, _transfer(tx, removed=True)))["new_feed_items"] == 1
    feed = (await app.http.get("/api/feed", headers={"Authorization": f"Bearer {token}"})).json()["items"]
    assert [i["type"] for i in feed] == ["transaction_updated", "new_transaction"]
    assert (feed[0]["ref"], feed[1]["payload"]["removed"]) == (feed[1]["id"], True)


async def test_a_reorg_left_unsettled_by_a_crash_reaches_the_tab_from_the_sweep(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    """The delivery's statement committed the removal, and the process died before settling it
    (the row is left reorg_pending, as that statement leaves it): the relay's sweep settles it,
    once, and the open tab gets the update."""
    token = await _watcher(app)
    tx = tx_hash()
    async with client(app, token) as ws:
        await ready(ws)
        await _post(app, _transfer(tx))
        (pushed,) = await recv_frames(ws, 1)
        await db.execute(
            "UPDATE transactions SET removed = true, left_blocks = ARRAY[block_hash],"
            " last_change = 'removed', reorg_pending = true WHERE hash = $1",
            tx,
        )
        (update,) = await recv_frames(ws, 1, within=10)
        assert (update["type"], update["ref"], update["payload"]["removed"]) == (
            "transaction_updated",
            pushed["id"],
            True,
        )
        await _next_push_is(ws, app)  # made once, not at every sweep
    assert await db.fetchval("SELECT reorg_pending FROM transactions WHERE hash = $1", tx) is False
