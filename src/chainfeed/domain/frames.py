"""WebSocket frames and the messages instances exchange about them, as plain functions.

A push is encoded to JSON text once, where the stream entry is consumed, and that same text
travels to every instance and every tab of the user. Between instances it rides in a small
envelope on the user's PUB/SUB channel: ``"<feed item id> <seq> <entry ms> [<traceparent>] <frame>"``
for a push, so a receiver can keep each connection in feed order, measure latency and continue
the trace without parsing the frame, or
``"!evict <connection id>"`` when the per-user connection cap closes a tab elsewhere.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec
from websockets.frames import CloseCode

from chainfeed.domain.feed import feed_frame

__all__ = [
    "EVICT_PREFIX",
    "PONG_FRAME",
    "PROTOCOL_CLOSE_CODES",
    "AppClose",
    "Auth",
    "CloseCode",
    "Evict",
    "Ping",
    "Push",
    "Resume",
    "auth_ok_frame",
    "encode_frame",
    "encode_item",
    "pack_push",
    "parse_client_message",
    "parse_since",
    "resumed_frame",
    "text_frame",
    "unpack",
]

#: Control messages on a user channel start with "!" (a frame always starts with "{").
EVICT_PREFIX = "!evict "
#: The answer to a client's ``{"type":"ping"}``.
PONG_FRAME = '{"type":"pong"}'
_MAX_SINCE = 2**63 - 1  # feed item ids are PostgreSQL bigints


class AppClose(enum.IntEnum):
    """The application's close codes (4000-4999), beside websockets' standard :class:`CloseCode`."""

    INVALID_SINCE = 4400
    UNAUTHORIZED = 4401  # missing, invalid or expired token
    ORIGIN_NOT_ALLOWED = 4403
    SLOW_CONSUMER = 4408
    TOO_MANY_CONNECTIONS = 4429


#: Close codes that mean the client broke the protocol (or stopped answering pings).
PROTOCOL_CLOSE_CODES = frozenset(
    {
        CloseCode.PROTOCOL_ERROR,
        CloseCode.UNSUPPORTED_DATA,
        CloseCode.INVALID_DATA,
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.INTERNAL_ERROR,
    }
)


@dataclass(frozen=True, slots=True)
class Push:
    """A frame for a user's tabs: ``seq`` orders it in the feed, ``entry_ms`` dates the stream entry.

    ``seq`` 0: the push has no place in the feed order (an entry that named an item without its
    number); connections send it as it comes.
    """

    item_id: int
    seq: int
    entry_ms: int
    frame: str
    #: W3C traceparent of the span that published it (the push span's parent), when traced.
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class Evict:
    """Close ``connection_id`` (wherever it lives) with 4429: its user opened one too many."""

    connection_id: str


@dataclass(frozen=True, slots=True)
class Ping:
    """The client's ``{"type":"ping"}``: answer ``{"type":"pong"}``."""


@dataclass(frozen=True, slots=True)
class Auth:
    """The client's ``{"type":"auth","token":JWT}``: a fresh token for the open connection."""

    token: str


@dataclass(frozen=True, slots=True)
class Resume:
    """The client's ``{"type":"resume","since":ID}``: replay its items with id > ``since``."""

    since: int


def encode_frame(
    *,
    item_id: int,
    seq: int | None,
    user_id: int,
    created_at: str,
    type_: str,
    payload_json: str,
    ref: int | None = None,
) -> str:
    """The frame's JSON text; the payload is embedded as written (validated upstream, not re-encoded)."""
    frame = feed_frame(
        item_id=item_id,
        seq=seq,
        user_id=user_id,
        created_at=created_at,
        payload=msgspec.Raw(payload_json.encode()),
        type_=type_,
        ref=ref,
    )
    return msgspec.json.encode(frame).decode()


def encode_item(item: dict[str, Any]) -> str:
    """The JSON text of a frame-shaped dict (a replayed feed item from PostgreSQL)."""
    return msgspec.json.encode(item).decode()


def text_frame(text: str) -> bytes:
    """``text`` as one complete, unmasked, uncompressed WebSocket text frame (RFC 6455, 5.2).

    Server frames are never masked, so the same bytes serve every connection: the hub builds
    them once per push and writes them to each tab. Written out rather than websockets'
    ``Frame.serialize``: that took 1.17 us a frame against 0.54 us here, and showed as 1.5 % of
    the server's samples in max mode (py-spy, ../shared/peers); tests check both agree.
    """
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


def auth_ok_frame(expires_at: float) -> str:
    """``{"type":"auth_ok","expires_at":<unix seconds>}``: the connection now expires then."""
    return msgspec.json.encode({"type": "auth_ok", "expires_at": int(expires_at)}).decode()


def resumed_frame(*, since: int, replayed: int, seq: int) -> str:
    """``{"type":"resumed",...}``: the replay after ``since`` is done; ``seq`` is the last number sent."""
    return msgspec.json.encode({"type": "resumed", "since": since, "replayed": replayed, "seq": seq}).decode()


def pack_push(
    item_id: int, seq: int | None, entry_ms: int, frame: str, traceparent: str | None = None
) -> str:
    """The envelope of a push on a user channel (``traceparent`` goes before the frame, if given)."""
    seq = seq or 0
    if traceparent is not None:
        return f"{item_id} {seq} {entry_ms} {traceparent} {frame}"
    return f"{item_id} {seq} {entry_ms} {frame}"


def unpack(message: str) -> Push | Evict | None:
    """What a user-channel message says; None for anything this version does not know."""
    if message.startswith(EVICT_PREFIX):
        return Evict(message[len(EVICT_PREFIX) :])
    if message.startswith("!"):
        return None
    parts = message.split(" ", 3)
    if len(parts) != 4 or not (parts[0].isdigit() and parts[1].isdigit() and parts[2].isdigit()):
        return None
    frame, traceparent = parts[3], None
    if frame.startswith("00-"):  # a frame starts with "{"; a W3C traceparent with its version
        traceparent, _, frame = frame.partition(" ")
    return Push(int(parts[0]), int(parts[1]), int(parts[2]), frame, traceparent)


def parse_since(raw: object) -> int | None:
    """A resume cursor (a feed item id, 0 for everything), or None when it is not one."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19:
        raw = int(raw)
    if isinstance(raw, int) and 0 <= raw <= _MAX_SINCE:
        return raw
    return None


def parse_client_message(text: str) -> Ping | Resume | Auth | None:
    """A frame from the client; None for anything else (clients and servers ignore unknown types)."""
    try:
        message = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None
    if not isinstance(message, dict):
        return None
    kind = message.get("type")
    if kind == "ping":
        return Ping()
    if kind == "resume":
        since = parse_since(message.get("since"))
        return None if since is None else Resume(since)
    if kind == "auth":  # a token that is not a string is an invalid token, refused as one
        token = message.get("token")
        return Auth(token if isinstance(token, str) else "")
    return None
