"""Shared fixtures: real PostgreSQL and Redis once per session, a clean slate per test, real uvicorn.

By default the session starts embedded servers (the same ones ``chainfeed dev`` uses) in a
temporary folder. Set CHAINFEED_TEST_DATABASE_URL and CHAINFEED_TEST_REDIS_URL to run against
external servers instead: the suite then creates (and drops) a database of its own next to the
one named, and FLUSHes the Redis database the URL names between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from redis.asyncio import Redis

from chainfeed.config import Settings
from chainfeed.devtools.embedded import EmbeddedRedis, free_port
from chainfeed.devtools.services import scratch_services
from chainfeed.runtime import Runtime
from chainfeed.storage import migrate
from chainfeed.web import create_app
from chainfeed.web.server import uvicorn_config

# A `chainfeed dev` running in this checkout must not lend its settings to the CLI runs of the
# tests (the CLI looks for one in CHAINFEED_DEV_DIR, ./.chainfeed by default): point it at an
# empty folder, inherited by every subprocess.
os.environ.setdefault("CHAINFEED_DEV_DIR", tempfile.mkdtemp(prefix="chainfeed-test-nodev-"))

JWT_SECRET = "test-secret-" + "x" * 40
#: log2 of scrypt's N in tests (production: 17).
TEST_PASSWORD_WORK = 14
SIGNING_KEY = "whsec_test_signing_key"


@pytest.fixture(scope="session")
def service_urls() -> Iterator[tuple[str, str]]:
    """(database_url, redis_url) of real servers for the whole session."""
    with scratch_services(
        database_url=os.environ.get("CHAINFEED_TEST_DATABASE_URL"),
        redis_url=os.environ.get("CHAINFEED_TEST_REDIS_URL"),
        prefix="chainfeed_test",
    ) as urls:
        yield urls


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    """A Redis (AOF on) of this test's own, so the test may stop and start it."""
    server = EmbeddedRedis(tmp_path / "redis")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture(scope="session")
async def migrated(service_urls: tuple[str, str]) -> tuple[str, str]:
    """The service URLs, with the schema applied once."""
    await migrate(service_urls[0])
    return service_urls


@pytest.fixture
def settings(migrated: tuple[str, str]) -> Settings:
    """Settings for one test: real servers, known secrets, SPEC defaults otherwise (but for
    password hashing at 2**14: each registration at OWASP's 2**17 costs 0.6 s of CPU)."""
    database_url, redis_url = migrated
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        jwt_secret=JWT_SECRET,
        alchemy_signing_keys=(SIGNING_KEY,),
        log_format="json",
        consumer_name=f"test-{secrets.token_hex(3)}",
        password_work=TEST_PASSWORD_WORK,
        registrations_per_ip_hour=100_000,  # every test registers from 127.0.0.1
    )


@pytest.fixture
async def db(migrated: tuple[str, str]) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection for assertions on rows."""
    conn = await asyncpg.connect(migrated[0])
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def redis(migrated: tuple[str, str]) -> AsyncIterator[Redis]:
    """A direct Redis client for assertions and hand XADDs."""
    client = Redis.from_url(migrated[1], decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
async def _clean_slate(request: pytest.FixtureRequest) -> None:
    """Empty every table and the Redis database before each test that uses the servers."""
    if "migrated" not in request.fixturenames:
        return
    database_url, redis_url = request.getfixturevalue("migrated")
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        )
        if tables:
            names = ", ".join(f'"{row["tablename"]}"' for row in tables)
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    client = Redis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


class RunningApp:
    """A ChainFeed app served by a real uvicorn on a loopback port."""

    def __init__(
        self, settings: Settings, server: uvicorn.Server, port: int, task: asyncio.Task[None]
    ) -> None:
        self.settings = settings
        self.server = server
        self.port = port
        self.task = task
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=10)

    async def register(
        self,
        username: str | None = None,
        password: str = "correct-horse",  # noqa: S107
    ) -> dict[str, Any]:
        """Register a fresh user; returns the API's body (token and user)."""
        username = username or f"user{secrets.token_hex(4)}"
        response = await self.http.post(
            "/api/auth/register", json={"username": username, "password": password}
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def stop(self) -> None:
        """Shut the server down as SIGTERM would (lifespan shutdown included); idempotent."""
        if not self.http.is_closed:
            await self.http.aclose()
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, timeout=15)

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def app_runtime(app: RunningApp) -> Runtime:
    """The Runtime of a running app (its lifespan put it on the app state)."""
    asgi: Any = app.server.config.loaded_app
    while not hasattr(asgi, "state"):
        asgi = asgi.app
    runtime: Runtime = asgi.state.runtime
    return runtime


class _InLoopServer(uvicorn.Server):
    """uvicorn serving on the test's event loop; the test runner keeps its signal handlers."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


AppFactory = Callable[..., Awaitable[RunningApp]]


@pytest.fixture
async def app_factory(settings: Settings) -> AsyncIterator[AppFactory]:
    """Start apps (``await app_factory(**setting_overrides)``); all are shut down after the test."""
    started: list[RunningApp] = []

    async def start(port: int | None = None, **overrides: Any) -> RunningApp:
        app_settings = replace(settings, **overrides)
        port = port or free_port()
        server = _InLoopServer(
            uvicorn_config(create_app(app_settings), app_settings, host="127.0.0.1", port=port)
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
        running = RunningApp(app_settings, server, port, task)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        await running.stop()


@pytest.fixture
async def app(app_factory: AppFactory) -> RunningApp:
    """One running app with default test settings."""
    return await app_factory()
