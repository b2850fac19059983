"""Users: create, find by name or id."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from chainfeed.errors import ConflictError

__all__ = [
    "User",
    "create_user",
    "ensure_watcher",
    "get_user",
    "get_user_by_name",
    "replace_password_hash",
    "user_exists",
]


@dataclass(frozen=True, slots=True)
class User:
    """A ChainFeed account (the password hash stays in the database layer's hands)."""

    id: int
    username: str
    password_hash: str

    def public(self) -> dict[str, object]:
        """What the API shows of a user."""
        return {"id": self.id, "username": self.username}


def _user(row: asyncpg.Record | None) -> User | None:
    return None if row is None else User(row["id"], row["username"], row["password_hash"])


async def create_user(pool: asyncpg.Pool, username: str, password_hash: str) -> User:
    """Insert a user; ConflictError when the name is taken."""
    row = await pool.fetchrow(
        "INSERT INTO users (username, password_hash) VALUES ($1, $2)"
        " ON CONFLICT (username) DO NOTHING RETURNING id, username, password_hash",
        username,
        password_hash,
    )
    user = _user(row)
    if user is None:
        raise ConflictError("username already taken")
    return user


async def get_user_by_name(pool: asyncpg.Pool, username: str) -> User | None:
    """The user called ``username`` (already lower-cased), if any."""
    return _user(
        await pool.fetchrow("SELECT id, username, password_hash FROM users WHERE username = $1", username)
    )


async def replace_password_hash(pool: asyncpg.Pool, user_id: int, old: str, new: str) -> bool:
    """Store ``new`` if the user's hash is still ``old`` (a concurrent change wins); True if stored."""
    status = await pool.execute(
        "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2", user_id, old, new
    )
    return bool(status.endswith(" 1"))


async def get_user(pool: asyncpg.Pool, user_id: int) -> User | None:
    """The user with ``user_id``, if it still exists."""
    return _user(await pool.fetchrow("SELECT id, username, password_hash FROM users WHERE id = $1", user_id))


async def user_exists(pool: asyncpg.Pool, user_id: int) -> bool:
    """Whether the user with ``user_id`` still exists (checked on every WebSocket connect)."""
    return bool(await pool.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", user_id))


async def ensure_watcher(
    pool: asyncpg.Pool, username: str, password_hash: str, address: str, label: str
) -> int:
    """The id of ``username``, created with ``password_hash`` if new, watching ``address`` (dev's demo)."""
    async with pool.acquire() as conn, conn.transaction():
        user_id = await conn.fetchval("SELECT id FROM users WHERE username = $1", username)
        if user_id is None:
            user_id = await conn.fetchval(
                "INSERT INTO users (username, password_hash) VALUES ($1, $2) RETURNING id",
                username,
                password_hash,
            )
        await conn.execute(
            "INSERT INTO watched_addresses (user_id, address, label) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            user_id,
            address,
            label,
        )
    return int(user_id)
