"""Ingest: Alchemy webhook -> PostgreSQL (with the outbox) -> relay -> the Redis stream; the address sync."""
