"""The simulator: realistic signed webhooks that the app accepts and that move watchers' feeds."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import asyncpg
import pytest

from chainfeed.cli import main
from chainfeed.cli.simulate import run_in_background, watched_addresses
from chainfeed.devtools.simulate import ActivityFactory, SimulationStats, simulate, webhook_url
from chainfeed.domain.alchemy import parse_webhook
from tests.conftest import SIGNING_KEY, AppFactory, RunningApp
from tests.ingest_support import address, eventually, watch

WATCHED = [address(0x5100), address(0x5101)]


def test_factory_payloads_parse_and_touch_a_watched_address() -> None:
    """Every synthetic activity is valid Alchemy input with a watched address on one side."""
    factory = ActivityFactory(random.Random(7))
    categories: Counter[str] = Counter()
    for _ in range(300):
        body = factory.webhook(WATCHED, activities=3)
        parsed = parse_webhook(json.dumps(body).encode())
        assert parsed.activity_count == 3
        for transfer in parsed.transfers:
            assert {transfer.from_address, transfer.to_address} & set(WATCHED)
            categories[transfer.category] += 1
    assert set(categories) == {"external", "internal", "token", "erc721", "erc1155"}


def test_webhook_url_appends_the_path_to_a_base_url() -> None:
    assert webhook_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/webhooks/alchemy"
    assert webhook_url("http://h:1/") == "http://h:1/webhooks/alchemy"
    assert webhook_url("https://h/custom/hook") == "https://h/custom/hook"


async def _watching(app: RunningApp, *addresses: str) -> None:
    session = await app.register()
    for watched in addresses:
        await watch(app, session["access_token"], watched)


async def test_simulation_moves_the_watchers_feeds(app: RunningApp, db: asyncpg.Connection) -> None:
    """Addresses come from the watch lists; every webhook is accepted and creates feed items."""
    await _watching(app, *WATCHED)
    seen: list[str] = []
    assert app.settings.database_url is not None
    stats = await simulate(
        url=app.base_url,
        rate=40,
        duration=0.5,
        signing_key=SIGNING_KEY,
        addresses=watched_addresses(app.settings.database_url),
        progress=lambda s: seen.append(s.line()),
        progress_every=0.1,
    )
    assert stats.failures == {}
    assert 10 <= stats.sent == stats.accepted
    assert stats.activities == 2 * stats.sent
    assert stats.feed_items == await db.fetchval("SELECT count(*) FROM feed_items") > 0
    assert seen
    assert seen[-1].startswith(f"sent {stats.sent} ({stats.sent} ok)")


async def test_wrong_key_is_reported_not_hidden(app: RunningApp) -> None:
    async def fixed() -> list[str]:
        return WATCHED

    stats: SimulationStats = await simulate(
        url=app.base_url, rate=20, duration=0.2, signing_key="whsec_wrong", addresses=fixed
    )
    assert stats.accepted == 0
    assert stats.failures == {"HTTP 401": stats.sent}


async def test_cli_runs_for_its_duration_with_progress(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """``chainfeed simulate --url --rate --duration --addresses`` exits 0 and prints progress."""
    monkeypatch.setenv("CHAINFEED_ALCHEMY_SIGNING_KEYS", SIGNING_KEY)
    monkeypatch.delenv("CHAINFEED_DATABASE_URL", raising=False)
    argv = ["simulate", "--url", app.base_url, "--rate", "20", "--duration", "0.5", "--addresses", WATCHED[0]]
    assert await asyncio.to_thread(main, argv) == 0
    err = capfd.readouterr().err
    assert "ok)" in err
    assert "activities" in err


async def test_cli_without_addresses_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHAINFEED_ALCHEMY_SIGNING_KEYS", SIGNING_KEY)
    monkeypatch.delenv("CHAINFEED_DATABASE_URL", raising=False)
    assert main(["simulate", "--duration", "1"]) == 1
    assert capfd.readouterr().err.strip() == (
        "chainfeed: CHAINFEED_DATABASE_URL: or --addresses is required to choose the addresses"
    )


async def test_dev_simulator_picks_up_a_newly_watched_address(
    app_factory: AppFactory, db: asyncpg.Connection
) -> None:
    """``dev --simulate``: a user who starts watching an address sees activity for it within seconds."""
    app = await app_factory()
    await _watching(app, WATCHED[0])
    assert app.settings.database_url is not None
    stop = run_in_background(
        url=app.base_url, rate=20, signing_key=SIGNING_KEY, database_url=app.settings.database_url
    )
    try:
        newcomer = address(0x5EED)
        await _watching(app, newcomer)

        async def newcomer_moves() -> bool:
            count = await db.fetchval(
                "SELECT count(*) FROM feed_items WHERE payload->>'address' = $1", newcomer
            )
            return bool(count)

        await eventually(newcomer_moves, within=15, what="a feed item for the new address")
    finally:
        stop.set()
