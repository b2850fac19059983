"""Pure rules of ChainFeed: no asyncio, Redis, PostgreSQL or web imports, so tests run in microseconds."""
