"""JWT HS256 access tokens with ``sub`` (user id as a decimal string), ``iat`` and ``exp``.

The algorithm is pinned on decode, so ``alg: none`` and HS/RS confusion are refused. Decode
errors become :class:`~chainfeed.errors.AuthError` with a reason the client may see
(``invalid token`` / ``token expired``); the token itself never goes into a message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from chainfeed.errors import AuthError, TokenExpired

__all__ = ["ALGORITHM", "Claims", "decode_token", "issue_token"]

ALGORITHM = "HS256"
#: A token longer than this is refused before any parsing (a cheap guard against abuse).
MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid token says: who, and until when (unix seconds)."""

    user_id: int
    expires_at: int


def issue_token(user_id: int, *, secret: str, ttl_seconds: int, now: float | None = None) -> str:
    """A signed token for ``user_id`` valid for ``ttl_seconds``."""
    issued = int(time.time() if now is None else now)
    claims = {"sub": str(user_id), "iat": issued, "exp": issued + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_token(token: str | None, *, secret: str) -> Claims:
    """The claims of a valid token; AuthError("missing token" | "invalid token") or TokenExpired."""
    if not token:
        raise AuthError("missing token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthError("invalid token")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp", "iat"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenExpired() from None
    except jwt.PyJWTError:
        raise AuthError("invalid token") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.isdigit():
        raise AuthError("invalid token")
    return Claims(user_id=int(sub), expires_at=int(claims["exp"]))
