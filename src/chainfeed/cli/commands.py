"""The sub-commands: each a function of its parsed arguments, returning an exit code."""

from __future__ import annotations

import argparse
import asyncio

from chainfeed import config
from chainfeed.cli.devmode import run_dev
from chainfeed.domain.tokens import issue_token
from chainfeed.errors import ConfigError, NotFoundError
from chainfeed.observability.logging import configure_logging
from chainfeed.storage import migrate as apply_migrations
from chainfeed.storage.pool import short_pool
from chainfeed.storage.users import get_user_by_name
from chainfeed.web.server import run_server

__all__ = ["dev", "migrate", "serve", "token"]


def dev(args: argparse.Namespace) -> int:
    """``chainfeed dev``: embedded servers, migrations, a demo user, and the app."""
    return run_dev(host=args.host, port=args.port, data_dir=args.data_dir, simulate=args.simulate)


def serve(args: argparse.Namespace) -> int:
    """``chainfeed serve``: production, with PostgreSQL and Redis from the environment."""
    settings = config.load()
    database_url, _ = settings.require_services()
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    asyncio.run(apply_migrations(database_url))
    run_server("chainfeed.web.server:app_from_env", settings, host=args.host, port=args.port,
               workers=args.workers)  # fmt: skip
    return 0


def migrate(args: argparse.Namespace) -> int:
    """``chainfeed migrate``: apply what is pending, say what was applied."""
    settings = config.load(dev=True)
    database_url, _ = _database_only(settings)
    applied = asyncio.run(apply_migrations(database_url))
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")
    return 0


def token(args: argparse.Namespace) -> int:
    """``chainfeed token USERNAME``: a token for an existing user, on stdout."""
    settings = config.load(dev=True)
    database_url, _ = _database_only(settings)
    if not settings.jwt_secret:
        raise ConfigError("CHAINFEED_JWT_SECRET", "is required to sign tokens")

    async def find() -> int:
        async with short_pool(database_url) as pool:
            user = await get_user_by_name(pool, args.username.lower())
        if user is None:
            raise NotFoundError(f"no user called {args.username!r}")
        return user.id

    user_id = asyncio.run(find())
    ttl = args.ttl or settings.jwt_ttl_seconds
    print(issue_token(user_id, secret=settings.jwt_secret, ttl_seconds=ttl))
    return 0


def _database_only(settings: config.Settings) -> tuple[str, None]:
    if not settings.database_url:
        raise ConfigError("CHAINFEED_DATABASE_URL", "is required")
    return settings.database_url, None
