"""The /feed page in a real headless Chromium, against a real server and the real pipeline.

The browser is Debian's chromium (scripts/install-test-deps installs it), driven by Playwright
through ``executable_path``; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from chainfeed.domain.tokens import issue_token
from tests.conftest import SIGNING_KEY, AppFactory, RunningApp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WATCHED = "0x" + "ab" * 20
OTHER = "0x" + "cd" * 20

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
    reason="chromium is not installed (scripts/install-test-deps installs it)",
)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    yield page
    await context.close()


async def _post_activities(app: RunningApp, *activities: dict[str, Any]) -> None:
    """A signed Alchemy ADDRESS_ACTIVITY webhook (a new event id each time) with ``activities``."""
    body = json.dumps(
        {
            "webhookId": "wh_page_test",
            "id": f"whevt_{secrets.token_hex(8)}",
            "createdAt": "2026-11-27T12:00:00.000Z",
            "type": "ADDRESS_ACTIVITY",
            "event": {"network": "ETH_MAINNET", "activity": list(activities)},
        }
    ).encode()
    signature = hmac.new(SIGNING_KEY.encode(), body, hashlib.sha256).hexdigest()
    response = await app.http.post(
        "/webhooks/alchemy",
        content=body,
        headers={"content-type": "application/json", "x-alchemy-signature": signature},
    )
    assert response.status_code == 200, response.text


async def _send_webhook(app: RunningApp, *, to: str, frm: str, value: float, asset: str) -> None:
    """A signed Alchemy ADDRESS_ACTIVITY webhook with one external transfer."""
    await _post_activities(
        app,
        {
            "blockNum": "0xdf34a3",
            "hash": "0x" + secrets.token_hex(32),
            "fromAddress": frm,
            "toAddress": to,
            "value": value,
            "asset": asset,
            "category": "external",
            "rawContract": {"rawValue": "0x0", "decimals": 18},
        },
    )


USDC = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
BLOCK_1 = "0x" + "b1" * 32
BLOCK_2 = "0x" + "b2" * 32


def _token_transfer(tx: str, *, block_hash: str, removed: bool, block_num: int = 0xDF34A3) -> dict[str, Any]:
    """A USDC transfer to the watched address, log index 4, as mined in (or removed from) a block."""
    return {
        "blockNum": hex(block_num),
        "hash": tx,
        "fromAddress": OTHER,
        "toAddress": WATCHED,
        "value": 42.5,
        "asset": "USDC",
        "category": "token",
        "rawContract": {"rawValue": "0x2887a20", "address": USDC, "decimals": 6},
        "log": {
            "address": USDC,
            "topics": ["0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"],
            "data": "0x",
            "blockNumber": hex(block_num),
            "transactionHash": tx,
            "blockHash": block_hash,
            "logIndex": "0x4",
            "removed": removed,
        },
    }


async def _open_feed_watching(page: Page, app: RunningApp) -> str:
    """A new user watching WATCHED, with the page open on their feed and connected; their token."""
    token = str((await app.register())["access_token"])
    response = await app.http.post("/api/addresses", json={"address": WATCHED}, headers=app.auth(token))
    assert response.status_code in (200, 201), response.text
    await page.goto(f"{app.base_url}/feed")
    await page.evaluate("token => localStorage.setItem('auth_token', token)", token)
    await page.reload()
    await expect(page.locator("#status-text")).to_have_text("Connected", timeout=10_000)
    return token


async def _log_in_through_the_page(page: Page, app: RunningApp) -> None:
    await page.goto(f"{app.base_url}/feed")
    await expect(page.locator("#auth")).to_be_visible()
    await page.fill("input[name=username]", f"web{secrets.token_hex(3)}")
    await page.fill("input[name=password]", "correct-horse-battery")
    await page.click("button[value=register]")
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#status-text")).to_have_text("Connected", timeout=10_000)


async def test_live_feed_login_watch_push_and_resume(page: Page, app_factory: AppFactory) -> None:
    """Log in, watch an address, see a pushed item without reload; survive a server restart."""
    app = await app_factory()
    other = await app_factory()  # a second instance keeps ingesting while the first is down
    await _log_in_through_the_page(page, app)
    assert await page.evaluate("localStorage.getItem('auth_token')")

    await page.fill("#add-form input[name=address]", WATCHED.upper().replace("0X", "0x"))
    await page.fill("#add-form input[name=label]", "savings")
    await page.click("#add-form button[type=submit]")
    await expect(page.locator(f'#addresses li[data-address="{WATCHED}"]')).to_contain_text("savings")

    await _send_webhook(app, to=WATCHED, frm=OTHER, value=1.25, asset="ETH")
    first = page.locator("#feed li").first
    await expect(first).to_contain_text("1.25 ETH", timeout=10_000)
    await expect(first.locator(".direction")).to_have_text("in")
    await expect(first.locator("a")).to_have_attribute(
        "href", re.compile(r"^https://etherscan\.io/tx/0x[0-9a-f]{64}$")
    )

    # The server goes away: grey, then a countdown.
    port = app.port
    await app.stop()
    await expect(page.locator("#status")).not_to_have_attribute("data-state", "connected", timeout=10_000)
    await expect(page.locator("#status-text")).to_contain_text("Reconnecting in", timeout=10_000)

    # Activity arrives (through the other instance) while this tab's server is down ...
    await _send_webhook(other, to=OTHER, frm=WATCHED, value=7, asset="USDC")
    # ... and after the restart the tab resumes from its last id and shows it, newest first.
    await app_factory(port=port)
    await expect(page.locator("#status-text")).to_have_text("Connected", timeout=20_000)
    newest = page.locator("#feed li").first
    await expect(newest).to_contain_text("7 USDC", timeout=10_000)
    await expect(newest.locator(".direction")).to_have_text("out")
    await expect(page.locator("#feed li")).to_have_count(2)

    # Stop watching: the address leaves the list (and the server's watch list).
    await page.click(f'#addresses li[data-address="{WATCHED}"] button')
    await expect(page.locator("#addresses li")).to_have_count(0)


async def test_history_is_loaded_on_first_visit(page: Page, app: RunningApp) -> None:
    session = await app.register()
    token = session["access_token"]
    await app.http.post("/api/addresses", json={"address": WATCHED}, headers=app.auth(token))
    for value in (1, 2, 3):
        await _send_webhook(app, to=WATCHED, frm=OTHER, value=value, asset="ETH")
    await page.goto(f"{app.base_url}/feed")
    await page.evaluate("token => localStorage.setItem('auth_token', token)", token)
    await page.reload()
    await expect(page.locator("#feed li")).to_have_count(3, timeout=10_000)
    await expect(page.locator("#feed li").first).to_contain_text("3 ETH")


async def test_expired_token_stops_reconnecting_and_asks_to_log_in(page: Page, app: RunningApp) -> None:
    user = (await app.register())["user"]
    expired = issue_token(user["id"], secret=app.settings.jwt_secret, ttl_seconds=60, now=time.time() - 3600)
    sockets: list[Any] = []

    def opened_socket(socket: Any) -> None:  # Playwright cannot take a bound builtin as a handler
        sockets.append(socket)

    page.on("websocket", opened_socket)
    await page.goto(f"{app.base_url}/feed")
    # A token that the REST API already refuses sends the user to the login form at once.
    await page.evaluate("token => localStorage.setItem('auth_token', token)", expired)
    await page.reload()
    await expect(page.locator("#auth")).to_be_visible()
    # A token that expires while the page is open: the socket closes with 4401 and stays closed.
    short = issue_token(user["id"], secret=app.settings.jwt_secret, ttl_seconds=2)
    await page.evaluate("token => localStorage.setItem('auth_token', token)", short)
    await page.reload()
    await expect(page.locator("#status-text")).to_have_text("Connected", timeout=10_000)
    await expect(page.locator("#auth")).to_be_visible(timeout=15_000)
    await expect(page.locator("#auth-error")).to_contain_text("expired")
    opened = len(sockets)
    await page.wait_for_timeout(5000)
    assert len(sockets) == opened, "the page kept reconnecting with an expired token"
    assert await page.evaluate("localStorage.getItem('auth_token')") is None


REMOVED = re.compile(r"(^|\s)removed(\s|$)")


async def test_a_reorg_strikes_the_row_through_and_a_reinclusion_restores_it(
    page: Page, app: RunningApp
) -> None:
    await _open_feed_watching(page, app)
    tx = "0x" + secrets.token_hex(32)
    rows = page.locator("#feed li")
    row = page.locator("#feed li", has=page.locator(f'a[href$="/tx/{tx}"]'))

    await _post_activities(app, _token_transfer(tx, block_hash=BLOCK_1, removed=False))
    await expect(row).to_have_count(1, timeout=10_000)
    await expect(row).to_contain_text("42.5 USDC")
    await expect(row).to_contain_text(f"block {0xDF34A3}")
    await expect(row).not_to_have_class(REMOVED)
    await expect(row).not_to_contain_text("removed by re-org")

    # The block is re-orged away: the same row (no second one) is struck through and labelled.
    await _post_activities(app, _token_transfer(tx, block_hash=BLOCK_1, removed=True))
    await expect(row).to_have_class(REMOVED, timeout=10_000)
    await expect(row.locator(".reorg-label")).to_have_text("removed by re-org")
    await expect(row).to_contain_text("42.5 USDC")
    await expect(rows).to_have_count(1)

    # Included again in another block: the row is restored and shows the new block number.
    await _post_activities(app, _token_transfer(tx, block_hash=BLOCK_2, removed=False, block_num=0xDF34A5))
    await expect(row).not_to_have_class(REMOVED, timeout=10_000)
    await expect(row).not_to_contain_text("removed by re-org")
    await expect(row).to_contain_text(f"block {0xDF34A5}")
    await expect(rows).to_have_count(1)


async def test_history_shows_a_removed_transfer_struck_through(page: Page, app: RunningApp) -> None:
    token = await _open_feed_watching(page, app)
    tx = "0x" + secrets.token_hex(32)
    await _post_activities(app, _token_transfer(tx, block_hash=BLOCK_1, removed=False))
    await _post_activities(app, _token_transfer(tx, block_hash=BLOCK_1, removed=True))
    row = page.locator("#feed li", has=page.locator(f'a[href$="/tx/{tx}"]'))
    await expect(row).to_have_class(REMOVED, timeout=10_000)
    # History holds the item (already showing removed) and its update, newest first.
    history = (await app.http.get("/api/feed", headers=app.auth(token))).json()["items"]
    assert [item["type"] for item in history] == ["transaction_updated", "new_transaction"]

    await page.reload()
    await expect(page.locator("#status-text")).to_have_text("Connected", timeout=10_000)
    await expect(page.locator("#feed li")).to_have_count(1, timeout=10_000)
    await expect(row).to_have_class(REMOVED)
    await expect(row).to_contain_text("removed by re-org")
    await expect(row).to_contain_text("42.5 USDC")
    await expect(page.locator("#feed-empty")).to_be_hidden()


async def test_an_activity_without_hash_or_block_shows_no_placeholders(page: Page, app: RunningApp) -> None:
    """Alchemy's NFT example: no hash, block number, value or asset."""
    await _open_feed_watching(page, app)
    nft = "0xe5a8a8ef4c5d8f8f35fb8dad0bd5d3d2c1b6e3a3"
    await _post_activities(
        app,
        {
            "fromAddress": "0x0000000000000000000000000000000000000000",
            "toAddress": WATCHED,
            "contractAddress": nft,
            "erc721TokenId": "0x1",
            "category": "erc721",
            "log": {"address": nft, "data": "0x", "removed": False},
        },
    )
    row = page.locator("#feed li")
    await expect(row).to_have_count(1, timeout=10_000)
    await expect(row).to_contain_text("#1")
    await expect(row.locator(".direction")).to_have_text("in")
    await expect(row.locator("a")).to_have_count(0)  # no hash, no "view tx" link
    await expect(row).not_to_contain_text("block")
    await expect(row).not_to_have_class(REMOVED)
    text = await page.locator("#feed").text_content() or ""
    for word in ("undefined", "null", "NaN"):
        assert word not in text, f"{word!r} in the feed: {text!r}"
