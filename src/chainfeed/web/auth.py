"""Register, log in, and who am I."""

from __future__ import annotations

import functools
import os
from typing import Any

import anyio
import msgspec
from litestar import Controller, Request, get, post
from litestar.di import Provide
from litestar.params import JSONBody

from chainfeed.domain.passwords import (
    hash_password,
    login_name,
    needs_rehash,
    validate_credentials,
    verify_password,
)
from chainfeed.domain.tokens import issue_token
from chainfeed.errors import AuthError, ValidationError
from chainfeed.storage.users import create_user, get_user_by_name, replace_password_hash
from chainfeed.web.deps import RuntimeDep, UserDep, provide_user
from chainfeed.web.openapi import error_responses

__all__ = ["AuthController", "MeController", "RefreshController"]


@functools.cache
def _dummy_hash(work: int) -> str:
    """A real hash to verify against when the user does not exist, so a login for an unknown name
    takes as long as one with a wrong password (no user enumeration by timing)."""
    return hash_password("not-a-real-password", work=work)


class Credentials(msgspec.Struct, forbid_unknown_fields=False):
    """Body of register and login."""

    username: str
    password: str


def _session(user: UserDep, runtime: RuntimeDep) -> dict[str, object]:
    settings = runtime.settings
    token = issue_token(user.id, secret=settings.jwt_secret, ttl_seconds=settings.jwt_ttl_seconds)
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": settings.jwt_ttl_seconds,
        "user": user.public(),
    }


#: scrypt runs in at most this many threads, one per core. Each hash takes 128 MiB and a core for
#: ~0.6 s: more threads only add latency, and with anyio's default 40 a burst of logins held its
#: peak RSS for good (each thread's malloc arena keeps it; seen in bench/soak.py).
_KDF_THREADS = anyio.CapacityLimiter(max(1, min(2, os.cpu_count() or 1)))


class AuthController(Controller):
    """``/api/auth``: accounts and tokens."""

    path = "/api/auth"

    @post("/register", status_code=201, responses=error_responses(400, 409, 413, 429, 503))
    async def register(
        self, data: JSONBody[Credentials], runtime: RuntimeDep, request: Request[Any, Any, Any]
    ) -> dict[str, object]:
        """Create an account (409 if the name is taken) and return a token for it; 429 with
        Retry-After past the registrations one IP may make in an hour."""
        await runtime.logins.registration(request.client.host if request.client else "unknown")
        username, password = validate_credentials(data.username, data.password)
        work = runtime.settings.password_work
        password_hash = await anyio.to_thread.run_sync(
            functools.partial(hash_password, password, work=work), limiter=_KDF_THREADS
        )
        user = await create_user(runtime.pool, username, password_hash)
        return _session(user, runtime)

    @post("/login", status_code=200, responses=error_responses(400, 401, 413, 429, 503))
    async def login(
        self, data: JSONBody[Credentials], runtime: RuntimeDep, request: Request[Any, Any, Any]
    ) -> dict[str, object]:
        """A fresh token for valid credentials; 401 for anything else, without saying which part was
        wrong; 429 with Retry-After after too many failures for the account or from the IP."""
        limiter = runtime.logins
        ip = request.client.host if request.client else "unknown"
        account = login_name(data.username)  # counted and checked under one spelling
        await limiter.check(account, ip)
        try:
            username, password = validate_credentials(data.username, data.password)
        except ValidationError:
            await limiter.failed(account, ip)
            raise AuthError("invalid username or password") from None
        work = runtime.settings.password_work
        user = await get_user_by_name(runtime.pool, username)
        stored = user.password_hash if user else _dummy_hash(work)
        valid = await anyio.to_thread.run_sync(verify_password, password, stored, limiter=_KDF_THREADS)
        if user is None or not valid:
            await limiter.failed(username, ip)
            raise AuthError("invalid username or password")
        await limiter.succeeded(username)
        if needs_rehash(stored, work=work):  # made with less work: replace it now we know the password
            fresh = await anyio.to_thread.run_sync(
                functools.partial(hash_password, password, work=work), limiter=_KDF_THREADS
            )
            await replace_password_hash(runtime.pool, user.id, stored, fresh)
        return _session(user, runtime)


class RefreshController(Controller):
    """``POST /api/auth/refresh``: a new token for the Bearer's user (the old one stays valid
    until it expires)."""

    path = "/api/auth/refresh"
    dependencies = {"user": Provide(provide_user)}  # noqa: RUF012

    @post(status_code=200, responses=error_responses(401, 503))
    async def refresh(self, user: UserDep, runtime: RuntimeDep) -> dict[str, object]:
        """Answers like login, with a fresh token."""
        return _session(user, runtime)


class MeController(Controller):
    """``/api/me``: the authenticated user."""

    path = "/api/me"
    dependencies = {"user": Provide(provide_user)}  # noqa: RUF012

    @get(responses=error_responses(401, 503))
    async def me(self, user: UserDep) -> dict[str, object]:
        """The user the token belongs to."""
        return user.public()
