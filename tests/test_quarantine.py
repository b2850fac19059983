"""Tolerant ingest on real servers: every signed Alchemy delivery is answered 200 for its content.

What the parser cannot use is quarantined (stored raw with its reason, counted once), the rest of
the delivery is stored and pushed; absent fields, Alchemy's own NFT example without a hash
included, reach the watcher. ``chainfeed quarantine list|replay`` run as an operator runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import asyncpg

from tests.conftest import RunningApp
from tests.delivery_support import client, ready, recv_frames
from tests.ingest_support import (
    Metrics,
    activity,
    address,
    nft_without_hash,
    post_webhook,
    tx_hash,
    watch,
    webhook,
)

ME, ALICE = address(0xA11CE0), address(0xA11CE1)

NFT_WITHOUT_HASH = nft_without_hash(ME)


async def _watcher(app: RunningApp) -> str:
    session = await app.register()
    await watch(app, session["access_token"], ME)
    return str(session["access_token"])


async def _quarantined(db: asyncpg.Connection) -> list[tuple[str, int, str]]:
    rows = await db.fetch("SELECT event_id, position, reason FROM quarantined_activities ORDER BY id")
    return [(r["event_id"], r["position"], r["reason"]) for r in rows]


async def test_one_unusable_activity_is_quarantined_and_the_good_one_pushed(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    token = await _watcher(app)
    metrics = Metrics()
    good = activity("external", frm=ALICE, to=ME)
    bad = {**activity("token", frm=ALICE, to=ME, log_index=2), "category": 7, "fromAddress": {"x": 1}}
    delivery = webhook(good, bad)
    async with client(app, token) as ws:
        await ready(ws)
        response = await post_webhook(app, delivery)
        assert response.status_code == 200, response.text
        assert response.json() == {"activities": 2, "new_feed_items": 1, "quarantined": 1}
        (pushed,) = await recv_frames(ws, 1)
        assert pushed["payload"]["hash"] == good["hash"]
    assert await _quarantined(db) == [(delivery["id"], 1, "wrong_type")]
    row = await db.fetchrow("SELECT detail, raw, network FROM quarantined_activities")
    assert row is not None
    assert "$.event.activity[1]" in row["detail"]
    assert (json.loads(row["raw"]), row["network"]) == (bad, "ETH_MAINNET")
    # Alchemy retries the same delivery: nothing more is stored, quarantined or counted.
    again = await post_webhook(app, delivery)
    assert again.json() == {"activities": 2, "new_feed_items": 0, "quarantined": 1}
    assert len(await _quarantined(db)) == 1
    assert metrics.delta("webhook_activities_quarantined_total", reason="wrong_type") == 1
    assert metrics.delta("webhook_requests_total", outcome="accepted") == 2


async def test_alchemys_nft_example_without_a_hash_reaches_its_watcher_once(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    token = await _watcher(app)
    delivery = webhook(NFT_WITHOUT_HASH, NFT_WITHOUT_HASH)  # two mints in one delivery: two transfers
    async with client(app, token) as ws:
        await ready(ws)
        response = await post_webhook(app, delivery)
        assert response.json() == {"activities": 2, "new_feed_items": 2}
        frames = await recv_frames(ws, 2)
    payload = frames[0]["payload"]
    assert (payload["hash"], payload["block_num"], payload["value"], payload["asset"]) == (
        None,
        None,
        None,
        None,
    )
    assert (payload["category"], payload["token_id"], payload["direction"]) == ("erc721", "0x1", "in")
    assert payload["contract"] == NFT_WITHOUT_HASH["contractAddress"]
    assert (await post_webhook(app, delivery)).json()["new_feed_items"] == 0
    assert await db.fetchval("SELECT count(*) FROM transactions") == 2
    assert await db.fetchval("SELECT count(*) FROM feed_items") == 2


async def test_what_postgresql_would_refuse_and_envelope_oddities_are_quarantined_not_refused(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    await _watcher(app)
    nul = {**activity("external", frm=ALICE, to=ME), "asset": "E\u0000TH"}
    with_nul = webhook(nul, activity("external", frm=ALICE, to=ME))
    assert (await post_webhook(app, with_nul)).json() == {
        "activities": 2,
        "new_feed_items": 1,
        "quarantined": 1,
    }
    no_network = webhook(activity("external", frm=ALICE, to=ME))
    del no_network["event"]["network"]
    assert (await post_webhook(app, no_network)).json()["quarantined"] == 1
    not_a_list = webhook()
    not_a_list["event"]["activity"] = {"hash": tx_hash()}
    assert (await post_webhook(app, not_a_list)).status_code == 200
    other_type = {**webhook(activity("external", frm=ALICE, to=ME)), "type": "NFT_ACTIVITY"}
    assert (await post_webhook(app, other_type)).json()["new_feed_items"] == 1
    assert [reason for _, _, reason in await _quarantined(db)] == [
        "nul_character",
        "no_network",
        "not_a_list",
    ]


async def _cli(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINFEED_")}
    env["CHAINFEED_DATABASE_URL"] = database_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chainfeed", "quarantine", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_quarantine_list_and_replay_after_a_parser_fix(app: RunningApp, db: asyncpg.Connection) -> None:
    """An older parser quarantined an activity this one can use (stored as it would have been):
    replay stores it with the key its delivery gives, the watcher's open tab gets it, and a second
    replay adds nothing. One still unusable stays listed and makes the replay exit 1."""
    token = await _watcher(app)
    fixed = activity("external", frm=ALICE, to=ME)
    broken = {**activity("external", frm=ALICE, to=ME), "hash": "0x12"}
    await db.executemany(
        "INSERT INTO quarantined_activities (event_id, position, network, reason, detail, raw)"
        " VALUES ($1, $2, 'ETH_MAINNET', 'wrong_type', 'old parser', $3)",
        [("whevt_old", 0, json.dumps(fixed)), ("whevt_old", 1, json.dumps(broken))],
    )
    url = app.settings.database_url
    assert url is not None

    code, out, err = await _cli(url, "list")
    assert code == 0, err
    assert "whevt_old" in out and "wrong_type" in out and "old parser" in out  # noqa: PT018
    code, out, _ = await _cli(url, "list", "--json")
    listed = json.loads(out)
    assert [(e["event_id"], e["position"], e["reason"]) for e in listed] == [
        ("whevt_old", 0, "wrong_type"), ("whevt_old", 1, "wrong_type")]  # fmt: skip
    assert json.loads(listed[0]["raw"]) == fixed
    assert listed[0]["age_seconds"] >= 0

    async with client(app, token) as ws:
        await ready(ws)
        code, out, err = await _cli(url, "replay", "--all")
        assert code == 1, (out, err)  # one is still unusable
        assert "1 of 2 stored" in out and "1 still quarantined" in out  # noqa: PT018
        assert "replayed 2" in err  # the progress line
        (pushed,) = await recv_frames(ws, 1, within=10)  # the app's relay sweep publishes it
        assert pushed["payload"]["hash"] == fixed["hash"]

    code, out, _ = await _cli(url, "list", "--json")
    (left,) = json.loads(out)
    assert (left["position"], left["reason"]) == (1, "bad_value")  # the current parser's reason
    code, out, _ = await _cli(url, "replay", "--id", str(listed[0]["id"]))
    assert (code, out.strip()) == (0, "nothing to replay (already replayed, or no such id)")
    code, _, _ = await _cli(url, "replay", "--all")
    assert await db.fetchval("SELECT count(*) FROM feed_items") == 1
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE hash = $1", fixed["hash"]) == 1
