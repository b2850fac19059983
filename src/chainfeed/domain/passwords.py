"""Password hashing with scrypt, a memory-hard KDF from the standard library.

scrypt (N=2**14, r=8, p=1: 16 MiB and ~50 ms per hash) resists GPU guessing like argon2 does and
needs no extra dependency. Hashes carry their parameters, so they can be raised later without
breaking stored ones. Hashing is CPU-bound: callers run it in a worker thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from chainfeed.errors import ValidationError

__all__ = ["hash_password", "login_name", "validate_credentials", "verify_password"]

_N, _R, _P = 2**14, 8, 1
_DKLEN = 32
MIN_PASSWORD, MAX_PASSWORD = 8, 256
_USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def login_name(username: object) -> str:
    """The account a login names: stripped and lower-cased, as stored (what every per-account
    count and check must use, or ``"  Victim"`` would be a fresh account to the limiter)."""
    return username.strip().lower() if isinstance(username, str) else ""


def validate_credentials(username: object, password: object) -> tuple[str, str]:
    """The normalised (lower-case) username and the password, or ValidationError saying what is wrong."""
    if not isinstance(username, str) or not isinstance(password, str):
        raise ValidationError("username and password must be strings")
    name = login_name(username)
    if not 3 <= len(name) <= 32 or not set(name) <= _USERNAME_CHARS:
        raise ValidationError("username must be 3-32 characters of a-z, 0-9, '_', '.', '-'")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValidationError(f"password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters")
    return name, password


def hash_password(password: str) -> str:
    """A self-describing scrypt hash: ``scrypt$N$r$p$salt$digest`` (base64)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return "$".join(("scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)))


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; constant-time on the digest."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
