"""Password hashing with scrypt, a memory-hard KDF from the standard library.

scrypt with OWASP's current parameters (N=2**17, r=8, p=1: 128 MiB and ~0.6 s of CPU per hash
here) resists GPU guessing like argon2 does and needs no extra dependency. ``work`` is log2 N
(``CHAINFEED_PASSWORD_WORK``; the tests use less). Hashes carry their parameters: a stored hash
made with less work still verifies, and :func:`needs_rehash` tells the login to replace it.
Hashing is CPU-bound: callers run it in a worker thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from chainfeed.errors import ValidationError

__all__ = [
    "DEFAULT_WORK",
    "hash_password",
    "login_name",
    "needs_rehash",
    "validate_credentials",
    "verify_password",
]

#: log2 of scrypt's N: OWASP's password storage cheat sheet asks for N=2**17 with r=8, p=1.
DEFAULT_WORK = 17
_R, _P = 8, 1
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


def hash_password(password: str, *, work: int = DEFAULT_WORK) -> str:
    """A self-describing scrypt hash: ``scrypt$N$r$p$salt$digest`` (base64), N = 2**work."""
    salt = os.urandom(16)
    n = 2**work
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=_R, p=_P, dklen=_DKLEN, maxmem=_maxmem(n, _R)
    )
    return "$".join(("scrypt", str(n), str(_R), str(_P), _b64(salt), _b64(digest)))


def needs_rehash(stored: str, *, work: int = DEFAULT_WORK) -> bool:
    """True when ``stored`` was made with less work than asked now (replace it at the next login)."""
    try:
        scheme, n, r, p, *_ = stored.split("$")
        return scheme != "scrypt" or int(n) < 2**work or int(r) < _R or int(p) < _P
    except ValueError:
        return True


def _maxmem(n: int, r: int) -> int:
    """What scrypt needs (128 * N * r bytes), with room: hashlib refuses above 32 MiB by default."""
    return 2 * 128 * n * r + 1024 * 1024


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; constant-time on the digest."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        if int(n) > 2**20 or int(r) > 32 or int(p) > 16:  # a stored value, but never a memory bomb
            return False
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=_maxmem(int(n), int(r)),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
