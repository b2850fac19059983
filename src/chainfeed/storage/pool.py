"""The asyncpg pool, sized for a 2-core instance, with JSON codecs set once per connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

__all__ = [
    "POSTGRES_DOWN",
    "POSTGRES_FAILURES",
    "Connection",
    "InputRefused",
    "Pool",
    "Record",
    "bounded_connection",
    "bounded_transaction",
    "create_pool",
    "ping",
    "short_pool",
]

#: The asyncpg types other layers name in signatures (only storage imports asyncpg).
Pool = asyncpg.Pool
Connection = asyncpg.Connection
Record = asyncpg.Record

#: What asyncpg raises when PostgreSQL cannot be reached or goes away mid-query.
POSTGRES_DOWN: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    TimeoutError,
)
#: PostgreSQL refused a value (e.g. a \\u0000 inside a string): the input's fault, not ours.
InputRefused = asyncpg.DataError
#: Any failure of a statement, the server's refusals included: what a worker pauses on and retries.
POSTGRES_FAILURES: tuple[type[Exception], ...] = (asyncpg.PostgresError, *POSTGRES_DOWN)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Releasing a connection: asyncpg has rolled back any open transaction; nothing else to undo.

    Its default reset also runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``,
    a round trip on every release (~15% of the app's CPU per WebSocket connect), for session
    state this code never creates: its advisory locks and settings are transaction-scoped
    (``pg_advisory_xact_lock``, ``SET LOCAL``), it never LISTENs, and cursors live in transactions.
    """


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose ``json``/``jsonb`` columns read and write Python objects.

    ``command_timeout`` bounds every statement, so an unreachable database turns into an error
    (and a 503) instead of a hung request.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=10,
        timeout=5,
        max_inactive_connection_lifetime=300,
        init=_init_connection,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def ping(pool: asyncpg.Pool) -> None:
    """Readiness: PostgreSQL answers a trivial query within 2 s."""
    await pool.fetchval("SELECT 1", timeout=2)


@contextlib.asynccontextmanager
async def bounded_connection(pool: asyncpg.Pool, seconds: float) -> AsyncIterator[Any]:
    """A pooled connection whose use ends within ``seconds`` (the pool wait included).

    ``TimeoutError`` when the body did not finish in time. The connection is then closed: a
    server that stopped answering would never answer what asyncpg sends to clean up after a
    cancelled query (or a ROLLBACK), and PostgreSQL rolls back what was open when it sees the close.
    """
    deadline = asyncio.get_running_loop().time() + seconds
    conn = await pool.acquire(timeout=seconds)
    try:
        async with asyncio.timeout_at(deadline):
            yield conn
    except TimeoutError:
        conn.terminate()
        raise
    finally:
        await pool.release(conn)


@contextlib.asynccontextmanager
async def bounded_transaction(pool: asyncpg.Pool, seconds: float) -> AsyncIterator[Any]:
    """A transaction on a :func:`bounded_connection`: committed within ``seconds``, or closed.

    Cancelled (the time ran out), it is not rolled back: the connection is closed instead.
    """
    async with bounded_connection(pool, seconds) as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            yield conn
        except asyncio.CancelledError:
            raise
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()


@contextlib.asynccontextmanager
async def short_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool for one command of the CLI, closed when the command is done."""
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()
