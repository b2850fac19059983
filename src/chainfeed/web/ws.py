"""``GET /ws?token=JWT[&since=ID]``: the live feed of one browser tab.

Every refusal happens after the handshake, with a close code and a reason the client can act on
(browsers see nothing of a refused handshake): 4403 ``origin not allowed`` (only when
CHAINFEED_WS_ALLOWED_ORIGINS is set and the browser's Origin is not in it), 4401 ``missing token``
/ ``invalid token`` / ``token expired``, 4400 ``invalid since``, 1013 when this process is full
or cannot reach Redis/PostgreSQL. The token is read here and never logged.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable
from typing import Any

import structlog
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.types import ControllerRouterHandler

from chainfeed.delivery.hub import Hub
from chainfeed.delivery.resume import Replay
from chainfeed.delivery.session import Session
from chainfeed.domain.frames import AppClose, CloseCode, parse_since
from chainfeed.domain.tokens import Claims, decode_token
from chainfeed.errors import AuthError, ClientGone
from chainfeed.observability.metrics import WEBSOCKET_ERRORS
from chainfeed.runtime import Runtime
from chainfeed.storage.users import user_exists
from chainfeed.web.deps import RuntimeDep
from chainfeed.web.wsprotocol import DIRECT_SEND

__all__ = ["ROUTES"]

log = structlog.get_logger(__name__)

#: Tokens this process verified lately, keyed by the exact token and secret, with their claims.
#: A reconnecting tab brings back the token it came with, and PyJWT's decode was ~7 % of the
#: CPU of a connect. A token is taken from here only while it has not expired; whether its user
#: still exists is asked on every connect all the same.
_VERIFIED: collections.OrderedDict[tuple[str, str], Claims] = collections.OrderedDict()
_VERIFIED_MAX = 10_000


class _Socket:
    """Litestar's WebSocket as a :class:`chainfeed.delivery.session.Socket`."""

    def __init__(self, socket: WebSocket[Any, Any, Any]) -> None:
        self._socket = socket
        #: The protocol's synchronous frame writer (uvicorn with our protocol only).
        extensions: dict[Any, Any] = socket.scope.get("extensions") or {}
        self.direct: Callable[[bytes], bool] | None = extensions.get(DIRECT_SEND)

    async def send_text(self, text: str) -> None:
        try:
            await self._socket.send_data(text, mode="text")
        except WebSocketDisconnect as exc:
            raise ClientGone(exc.code) from None
        except (OSError, RuntimeError):
            # uvicorn: the transport is gone (ClientDisconnected), or its close is already sent.
            raise ClientGone(CloseCode.ABNORMAL_CLOSURE) from None

    async def receive_text(self) -> str | None:
        try:
            event = await self._socket.receive()
        except WebSocketDisconnect as exc:
            raise ClientGone(exc.code) from None
        if event["type"] == "websocket.disconnect":
            raise ClientGone(int(event.get("code", CloseCode.NO_STATUS_RCVD)))
        text = event.get("text")
        return text if isinstance(text, str) else None

    async def close(self, code: int, reason: str) -> None:
        try:
            await self._socket.close(code, reason)
        except WebSocketDisconnect as exc:
            raise ClientGone(exc.code) from None
        except (OSError, RuntimeError):
            raise ClientGone(CloseCode.ABNORMAL_CLOSURE) from None


async def _refuse(socket: WebSocket[Any, Any, Any], code: int, reason: str, *, error: str | None) -> None:
    """Accept, then close with ``code``: the client learns why (a refused handshake says nothing)."""
    if error is not None:
        WEBSOCKET_ERRORS.labels(error).inc()
    try:
        await socket.accept()
        await socket.close(code, reason)
    except (WebSocketDisconnect, OSError, RuntimeError):
        pass  # the client is gone already


async def _authenticate(runtime: Runtime, token: str | None) -> tuple[int, float]:
    """``(user id, token expiry)``; AuthError with the reason for the client otherwise."""
    secret = runtime.settings.jwt_secret
    claims = _VERIFIED.get((token, secret)) if token else None
    if claims is None or claims.expires_at <= time.time():
        claims = decode_token(token, secret=secret)  # raises for a bad or expired one
        assert token is not None
        _VERIFIED[token, secret] = claims
        if len(_VERIFIED) > _VERIFIED_MAX:
            _VERIFIED.popitem(last=False)
    if not await user_exists(runtime.pool, claims.user_id):
        raise AuthError("invalid token")
    return claims.user_id, float(claims.expires_at)


async def _refreshed(runtime: Runtime, user_id: int, token: str) -> float:
    """A token sent on an open connection: its expiry, when it is valid and the same user's."""
    claims_user, expires_at = await _authenticate(runtime, token)
    if claims_user != user_id:
        raise AuthError("invalid token")  # another user's token: never a way to switch users
    return expires_at


@websocket("/ws")
async def feed_socket(socket: WebSocket[Any, Any, Any], runtime: RuntimeDep) -> None:
    """Authenticate, register with the hub, replay what was missed, then push live until closed."""
    settings = runtime.settings
    hub = runtime.hub
    allowed, origin = settings.ws_allowed_origins, socket.headers.get("origin")
    # Browsers always send Origin; a client without one is not a browser page and could claim any.
    if allowed is not None and origin is not None and origin not in allowed:
        await _refuse(socket, AppClose.ORIGIN_NOT_ALLOWED, "origin not allowed", error="origin")
        return
    query = socket.query_params
    try:
        user_id, expires_at = await _authenticate(runtime, query.get("token"))
    except AuthError as exc:
        await _refuse(socket, AppClose.UNAUTHORIZED, exc.reason, error="auth")
        return
    except Exception as exc:  # PostgreSQL is down: the client should come back later
        log.warning("websocket authentication unavailable", error=type(exc).__name__)
        await _refuse(socket, CloseCode.TRY_AGAIN_LATER, "try again later", error=None)
        return
    raw_since = query.get("since")
    since = None if raw_since is None else parse_since(raw_since)
    if raw_since is not None and since is None:
        await _refuse(socket, AppClose.INVALID_SINCE, "invalid since", error="protocol")
        return
    if not hub.reserve():
        await _refuse(socket, CloseCode.TRY_AGAIN_LATER, "server at capacity", error="limit")
        return
    await _serve(socket, runtime, hub, user_id=user_id, expires_at=expires_at, since=since)


async def _serve(
    socket: WebSocket[Any, Any, Any],
    runtime: Runtime,
    hub: Hub,
    *,
    user_id: int,
    expires_at: float,
    since: int | None,
) -> None:
    """Run an admitted connection (its slot is reserved) until it closes."""
    try:
        await socket.accept()
    except (WebSocketDisconnect, OSError, RuntimeError):
        hub.release()
        return
    try:
        conn, user_connections = await hub.open(user_id, expires_at=expires_at)
    except Exception as exc:  # Redis is down: the client should come back later
        log.warning("websocket registration failed", user_id=user_id, error=type(exc).__name__)
        await _refuse(socket, CloseCode.TRY_AGAIN_LATER, "try again later", error=None)
        return
    log.debug(  # the summary at INFO is the "disconnected" line
        "websocket client connected",
        user_id=user_id,
        user_connections=user_connections,
        total_connections=hub.total,
        resume=since is not None,
    )
    started = time.monotonic()
    code: int = CloseCode.ABNORMAL_CLOSURE
    try:
        refresh = functools.partial(_refreshed, runtime, user_id)
        code = await Session(conn, _Socket(socket), Replay(runtime.pool, user_id), refresh).run(since)
    finally:
        await hub.close(conn)
        log.info(
            "websocket client disconnected",
            user_id=user_id,
            code=code,
            duration_seconds=round(time.monotonic() - started, 3),
            resume=since is not None,
            user_connections=user_connections,  # when it opened, across instances
            total_connections=hub.total,
        )


ROUTES: list[ControllerRouterHandler] = [feed_socket]
