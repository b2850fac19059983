"""Versioned SQL migrations, applied in order, once, under an advisory lock.

Several instances may start at once; the advisory lock serialises them and the
``schema_migrations`` table records what ran, so each file runs exactly once.
"""

from __future__ import annotations

from importlib import resources

import asyncpg
import structlog

__all__ = ["available_migrations", "migrate"]

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
