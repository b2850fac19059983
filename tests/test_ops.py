"""Liveness, readiness (naming what fails), metrics, and migrations that run once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from redis.asyncio import Redis

from chainfeed.devtools.embedded import free_port
from chainfeed.storage import migrate
from chainfeed.storage.migrate import available_migrations
from tests.conftest import AppFactory, RunningApp, app_runtime


async def test_healthz_and_readyz(app: RunningApp) -> None:
    assert (await app.http.get("/healthz")).json() == {"status": "ok"}
    ready = await app.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok", "consumer": "ok"}


async def test_readyz_names_the_failing_part(app: RunningApp) -> None:
    """With Redis unreachable, /readyz is 503 and names redis (and only redis)."""
    # Point the live runtime's Redis at a port nothing listens on.
    state_runtime = app_runtime(app)
    original = state_runtime.redis
    state_runtime.redis = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    state_runtime.checks["redis"] = state_runtime.redis.ping
    try:
        ready = await app.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["failing"] == ["redis"]
    finally:
        await state_runtime.redis.aclose()
        state_runtime.redis = original


async def test_metrics_are_prometheus_text(app: RunningApp) -> None:
    await app.http.get("/healthz")
    response = await app.http.get("/metrics")
    assert response.status_code == 200
    assert "websocket_active_connections" in response.text
    assert 'http_requests_total{app_name="chainfeed",method="GET",path="/healthz"' in response.text


async def test_migrations_run_once_even_concurrently(
    migrated: tuple[str, str], db: asyncpg.Connection
) -> None:
    results = await asyncio.gather(*(migrate(migrated[0]) for _ in range(3)))
    assert results == [[], [], []]
    versions = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [row["version"] for row in versions] == [v for v, _, _ in available_migrations()]


async def test_the_root_redirects_to_the_feed_page(app: RunningApp) -> None:
    response = await app.http.get("/")
    assert (response.status_code, response.headers["location"]) == (302, "/feed")


async def test_an_unknown_chainfeed_variable_is_warned_about_at_start(
    app_factory: AppFactory, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    await app_factory(unknown_variables=(("CHAINFEED_WS_MAX_PER_USR", "CHAINFEED_WS_MAX_PER_USER"),))
    # structlog prints, or goes through the stdlib's logging once a test configured it: look at both.
    out, err = capfd.readouterr()
    lines = [*(out + err).splitlines(), *(r.getMessage() for r in caplog.records)]
    warned = [
        line for line in lines if "unknown setting ignored" in line and "CHAINFEED_WS_MAX_PER_USR" in line
    ]
    assert warned, lines[-20:]
    assert "CHAINFEED_WS_MAX_PER_USER" in warned[0].replace("CHAINFEED_WS_MAX_PER_USR", "")
