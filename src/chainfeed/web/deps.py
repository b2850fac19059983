"""Dependencies shared by route handlers: the runtime and the authenticated user."""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from chainfeed.domain.tokens import decode_token
from chainfeed.errors import AuthError
from chainfeed.runtime import Runtime
from chainfeed.storage.users import User, get_user

__all__ = ["RuntimeDep", "UserDep", "provide_runtime", "provide_user"]

#: Handler parameter types that name their dependency explicitly (Litestar 3 drops inference).
RuntimeDep = NamedDependency[Runtime]
UserDep = NamedDependency[User]


def provide_runtime(state: State) -> Runtime:
    """The process runtime opened by the lifespan."""
    runtime: Runtime = state.runtime
    return runtime


async def provide_user(request: Request[object, object, State], runtime: RuntimeDep) -> User:
    """The user named by ``Authorization: Bearer <token>``; AuthError (401) otherwise.

    A valid token for a user that no longer exists is refused like a forged one.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("missing token")
    claims = decode_token(token.strip(), secret=runtime.settings.jwt_secret)
    user = await get_user(runtime.pool, claims.user_id)
    if user is None:
        raise AuthError("invalid token")
    return user
