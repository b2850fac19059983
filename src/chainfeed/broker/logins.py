"""Failed-login counters in Redis for the login rate limit (policy: ``domain.ratelimit``).

One counter per account and one per client IP (``ratelimit:login:user:<name>`` and
``ratelimit:login:ip:<address>``), each a fixed window: ``SET NX EX`` starts it, ``INCR`` counts,
both in one MULTI so a window always expires. A check reads both counters and their PTTL in one
round trip.

**Fails open.** When Redis does not answer, logins are not limited (a warning is logged): the
limit slows password guessing, which scrypt already makes expensive, and refusing every login
during a Redis outage would lock every user out of a service whose data lives in PostgreSQL.
"""

from __future__ import annotations

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from chainfeed.domain.ratelimit import DEFAULT_LOGIN_POLICY, Limit, LoginPolicy, retry_after
from chainfeed.errors import RateLimitedError
from chainfeed.names import LOGIN_IP_PREFIX, LOGIN_USER_PREFIX, REGISTER_IP_PREFIX
from chainfeed.observability.metrics import AUTH_LOGIN_RATE_LIMITED

__all__ = ["LoginLimiter"]

log = structlog.get_logger(__name__)


class LoginLimiter:
    """Checks and counts failed logins per account and per IP."""

    def __init__(self, redis: Redis, policy: LoginPolicy = DEFAULT_LOGIN_POLICY) -> None:
        self._redis = redis
        self._policy = policy

    def _keys(self, username: str, ip: str) -> list[tuple[str, Limit, str]]:
        return [
            (f"{LOGIN_USER_PREFIX}{username.lower()[:128]}", self._policy.per_account, "account"),
            (f"{LOGIN_IP_PREFIX}{ip}", self._policy.per_ip, "ip"),
        ]

    async def check(self, username: str, ip: str) -> None:
        """Raise RateLimitedError when the account or the IP is over its limit."""
        keys = self._keys(username, ip)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for key, _, _ in keys:
                pipe.get(key)
                pipe.pttl(key)
            values = await pipe.execute()
        except RedisError as exc:
            log.warning("login rate limit unavailable; not limiting", error=type(exc).__name__)
            return
        for index, (_, limit, scope) in enumerate(keys):
            failures, ttl_ms = values[2 * index], values[2 * index + 1]
            wait = retry_after(int(failures or 0), int(ttl_ms), limit)
            if wait is not None:
                # The counter and the log say which limit refused it (never the name or the IP).
                AUTH_LOGIN_RATE_LIMITED.labels(scope=scope).inc()
                log.warning("login rate limited", scope=scope, retry_after=wait)
                raise RateLimitedError(wait)

    async def failed(self, username: str, ip: str) -> None:
        """Count a failed login against the account and the IP."""
        try:
            pipe = self._redis.pipeline(transaction=True)
            for key, limit, _ in self._keys(username, ip):
                pipe.set(key, 0, ex=limit.window_seconds, nx=True)
                pipe.incr(key)
            await pipe.execute()
        except RedisError as exc:
            log.warning("login rate limit unavailable; failure not counted", error=type(exc).__name__)

    async def registration(self, ip: str) -> None:
        """Count a registration from ``ip``; RateLimitedError once the IP is past its limit."""
        limit = self._policy.registrations_per_ip
        key = f"{REGISTER_IP_PREFIX}{ip}"
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.set(key, 0, ex=limit.window_seconds, nx=True)
            pipe.incr(key)
            pipe.pttl(key)
            _, count, ttl_ms = await pipe.execute()
        except RedisError as exc:
            log.warning("registration rate limit unavailable; not limiting", error=type(exc).__name__)
            return
        wait = retry_after(int(count) - 1, int(ttl_ms), limit)  # this one is allowed up to the limit
        if wait is not None:
            AUTH_LOGIN_RATE_LIMITED.labels(scope="registration").inc()
            log.warning("registration rate limited", scope="registration", retry_after=wait)
            raise RateLimitedError(wait)

    async def succeeded(self, username: str) -> None:
        """A right password clears the account's count (never the IP's)."""
        try:
            await self._redis.delete(f"{LOGIN_USER_PREFIX}{username.lower()[:128]}")
        except RedisError as exc:
            log.warning("login rate limit unavailable; count not cleared", error=type(exc).__name__)
