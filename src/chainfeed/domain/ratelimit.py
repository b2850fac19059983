"""Login rate limits as a pure policy: how many failed logins a window allows, and the answer.

Fixed windows of failed attempts, counted per account (username) and per client IP. A window
starts at the first failure and lasts ``window_seconds``; once ``attempts`` failures are in it,
every login for that account (or from that IP) is refused with 429 and ``Retry-After`` = the rest
of the window, before any password is checked. A successful login clears its account's count
(not the IP's: one right password must not reset a sweep over many accounts).

Registrations are counted per IP whether they succeed or not (each costs a password hash, and
each account is a fresh per-account limit for a guesser): past ``registrations_per_ip`` in its
window, registering answers 429 too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DEFAULT_LOGIN_POLICY", "Limit", "LoginPolicy", "retry_after"]


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``attempts`` failures per ``window_seconds``."""

    attempts: int
    window_seconds: int


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    """The two limits a login is checked against."""

    per_account: Limit = Limit(attempts=10, window_seconds=300)
    per_ip: Limit = Limit(attempts=100, window_seconds=300)
    registrations_per_ip: Limit = Limit(attempts=20, window_seconds=3600)


DEFAULT_LOGIN_POLICY = LoginPolicy()


def retry_after(failures: int, ttl_ms: int, limit: Limit) -> int | None:
    """Seconds to wait when ``failures`` (with ``ttl_ms`` left in the window) reach ``limit``; else None.

    ``ttl_ms`` is what Redis' PTTL says: negative when the key has no expiry or does not exist, in
    which case a full window is assumed (the counter is about to be given one).
    """
    if failures < limit.attempts:
        return None
    if ttl_ms <= 0:
        return limit.window_seconds
    return max(1, math.ceil(ttl_ms / 1000))
