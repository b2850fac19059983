"""Real PostgreSQL and Redis for a test run or a benchmark: external when named, embedded otherwise.

Written once for every caller (the test suite, the benchmarks): with both URLs given, a scratch
database is created beside the named one and dropped afterwards, and the Redis is used as it is;
otherwise embedded servers run in a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from chainfeed.devtools.embedded import embedded_services
from chainfeed.storage.migrate import create_database, drop_database

__all__ = ["scratch_database", "scratch_services"]


@contextlib.contextmanager
def scratch_database(admin_url: str, *, prefix: str = "chainfeed_scratch") -> Iterator[str]:
    """The URL of a new database on the server ``admin_url`` names; dropped on exit."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    asyncio.run(create_database(admin_url, name))
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        asyncio.run(drop_database(admin_url, name))


@contextlib.contextmanager
def scratch_services(
    *, database_url: str | None = None, redis_url: str | None = None, prefix: str = "chainfeed_scratch"
) -> Iterator[tuple[str, str]]:
    """``(database_url, redis_url)`` for one run: external servers when both are given, else embedded."""
    if database_url and redis_url:
        with scratch_database(database_url, prefix=prefix) as scratch:
            yield scratch, redis_url
        return
    root = Path(tempfile.mkdtemp(prefix=f"{prefix.replace('_', '-')}-"))
    root.chmod(0o755)  # the PostgreSQL service user must traverse it
    try:
        with embedded_services(root) as urls:
            yield urls
    finally:
        shutil.rmtree(root, ignore_errors=True)
