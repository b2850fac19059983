"""``chainfeed dev``: the whole service on one machine, with nothing installed but this package.

Starts embedded PostgreSQL and Redis under ``./.chainfeed/`` (unless CHAINFEED_DATABASE_URL /
CHAINFEED_REDIS_URL point elsewhere), applies migrations, makes a demo user with a watched
address, prints how to log in, and serves the app. Secrets made here are kept in
``.chainfeed/dev-secrets.json`` so tokens stay valid across restarts. Ctrl-C stops what it started;
the data stays for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from chainfeed import config
from chainfeed.cli import simulate as simulator
from chainfeed.config import Settings
from chainfeed.devtools.embedded import EmbeddedPostgres, EmbeddedRedis
from chainfeed.domain.passwords import hash_password
from chainfeed.domain.tokens import issue_token
from chainfeed.observability.logging import configure_logging
from chainfeed.storage import migrate
from chainfeed.storage.pool import short_pool
from chainfeed.storage.users import ensure_watcher
from chainfeed.web import create_app
from chainfeed.web.server import run_server

__all__ = ["DEMO_ADDRESS", "DEMO_PASSWORD", "DEMO_USER", "run_dev"]

DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - a published local-only demo login
#: A well-known, busy mainnet address, so simulated and real activity look familiar.
DEMO_ADDRESS = "0xd8da6bf26964af9d7eed9e10e41856af7f5f8c8e"


def run_dev(*, host: str, port: int, data_dir: str, simulate: float | None = None) -> int:
    """Start everything, serve until Ctrl-C, stop what was started.

    With ``simulate`` (webhooks per second), signed synthetic Alchemy webhooks about the watched
    addresses flow in from a background thread, so the feed moves without a real Alchemy.
    """
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    settings = _with_dev_secrets(config.load(dev=True), root)
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    with _services(settings, root) as settings:
        assert settings.database_url is not None
        asyncio.run(migrate(settings.database_url))
        user_id = asyncio.run(_ensure_demo_user(settings.database_url))
        token = issue_token(user_id, secret=settings.jwt_secret, ttl_seconds=settings.jwt_ttl_seconds)
        _banner(settings, host=host, port=port, token=token)
        stop_simulator = None
        if simulate:
            local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - a comparison
            stop_simulator = simulator.run_in_background(
                url=f"http://{local}:{port}",
                rate=simulate,
                signing_key=settings.alchemy_signing_keys[0],
                database_url=settings.database_url,
            )
        try:
            run_server(create_app(settings), settings, host=host, port=port)
        finally:
            if stop_simulator is not None:
                stop_simulator.set()
    return 0


def _with_dev_secrets(settings: Settings, root: Path) -> Settings:
    """Fill in a JWT secret and a signing key, made once and kept under ``root``."""
    path = root / "dev-secrets.json"
    if path.exists():
        saved = json.loads(path.read_text())
    else:
        saved = {"jwt_secret": secrets.token_urlsafe(48), "signing_key": "whsec_" + secrets.token_urlsafe(24)}
        path.write_text(json.dumps(saved))
        path.chmod(0o600)
    return replace(
        settings,
        jwt_secret=settings.jwt_secret or saved["jwt_secret"],
        alchemy_signing_keys=settings.alchemy_signing_keys or (saved["signing_key"],),
    )


@contextlib.contextmanager
def _services(settings: Settings, root: Path) -> Iterator[Settings]:
    """Embedded servers for whichever of PostgreSQL and Redis the environment does not name."""
    postgres = None if settings.database_url else EmbeddedPostgres(root / "postgres")
    redis = None if settings.redis_url else EmbeddedRedis(root / "redis")
    try:
        database_url = postgres.start() if postgres else settings.database_url
        redis_url = redis.start() if redis else settings.redis_url
        assert database_url is not None
        assert redis_url is not None
        yield settings.with_services(database_url=database_url, redis_url=redis_url)
    finally:
        # A second Ctrl-C (or a wrapper forwarding the first one again) must not strand a server.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if redis:
                redis.stop()
            if postgres:
                postgres.stop()
        finally:
            signal.signal(signal.SIGINT, previous)


async def _ensure_demo_user(database_url: str) -> int:
    """The demo user's id, creating the user and its watched address on first run."""
    async with short_pool(database_url) as pool:
        return await ensure_watcher(
            pool, DEMO_USER, hash_password(DEMO_PASSWORD), DEMO_ADDRESS, "vitalik.eth"
        )


def _banner(settings: Settings, *, host: str, port: int, token: str) -> None:
    base = f"http://{host}:{port}"
    lines = [
        "",
        "ChainFeed dev is starting",
        f"  app        {base}   (live feed page: {base}/feed)",
        f"  login      {DEMO_USER} / {DEMO_PASSWORD}   (watching {DEMO_ADDRESS})",
        f"  token      {token}",
        f"  try        curl -H 'Authorization: Bearer <token>' {base}/api/me",
        f"  postgres   {settings.database_url}",
        f"  redis      {settings.redis_url}",
        f"  signing key (X-Alchemy-Signature) is in {Path('.chainfeed') / 'dev-secrets.json'}",
        "  Ctrl-C stops everything; data stays in ./.chainfeed/ for the next run.",
        "",
    ]
    print("\n".join(lines), flush=True)
