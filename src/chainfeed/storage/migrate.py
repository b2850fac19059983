"""Versioned SQL migrations, applied in order, once, under an advisory lock.

Several instances may start at once; the advisory lock serialises them and the
``schema_migrations`` table records what ran, so each file runs exactly once.
"""

from __future__ import annotations

from importlib import resources

import asyncpg
import structlog

__all__ = ["available_migrations", "create_database", "drop_database", "migrate"]

_LOCK_KEY = 0x63686169  # "chai": an arbitrary constant shared by every instance
log = structlog.get_logger(__name__)


def available_migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` for every ``NNN_name.sql`` shipped in the package, in order."""
    found = []
    for entry in resources.files("chainfeed.storage").joinpath("sql").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; returns the names applied now (empty when up to date)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
            applied = []
            for version, name, sql in available_migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                    )
                log.info("migration applied", migration=name)
                applied.append(name)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()


async def create_database(admin_url: str, name: str) -> None:
    """``CREATE DATABASE name`` on the server ``admin_url`` names (scratch databases, dev tools)."""
    await _admin(admin_url, f'CREATE DATABASE "{_identifier(name)}"')


async def drop_database(admin_url: str, name: str) -> None:
    """Drop ``name`` even while clients are connected (``WITH (FORCE)``, PostgreSQL 13+)."""
    await _admin(admin_url, f'DROP DATABASE IF EXISTS "{_identifier(name)}" WITH (FORCE)')


async def _admin(admin_url: str, sql: str) -> None:
    """A statement that cannot run in a transaction (or a pool), on a connection of its own."""
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _identifier(name: str) -> str:
    """``name`` when it is a plain identifier; database names here are ours, never user input."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain identifier: {name!r}")
    return name
