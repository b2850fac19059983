"""PostgreSQL adapter: the asyncpg pool, migrations, and one module of queries per table group."""

from chainfeed.storage.migrate import migrate
from chainfeed.storage.pool import create_pool

__all__ = ["create_pool", "migrate"]
