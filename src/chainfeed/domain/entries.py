"""Reading a ``feed:stream`` entry: what it says, or why it can never be delivered.

Two kinds of entry arrive (../shared/SPEC.md, "Redis stream message"): the outbox relay's, which
carry ``feed_item_id`` and ``created_at`` of a committed feed item, and hand-made ones
(``XADD feed:stream '*' user_id 1 type test payload '{...}'``) that have neither and must be
persisted before they are pushed. An entry that cannot be read raises :class:`PoisonEntry`; the
consumer retries it and finally moves it to the dead-letter stream (never drops it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from chainfeed.errors import PoisonEntry
from chainfeed.names import FEED_ITEM_TYPE

__all__ = ["MAX_TYPE_LENGTH", "StreamItem", "entry_millis", "parse_entry"]

#: A frame ``type`` is a short identifier; anything longer is not an entry we wrote.
MAX_TYPE_LENGTH = 64
_MAX_ID_DIGITS = 18  # fits a PostgreSQL bigint


@dataclass(frozen=True, slots=True)
class StreamItem:
    """A readable stream entry. ``payload_json`` is the validated JSON text, kept as written."""

    entry_id: str
    user_id: int
    type: str
    payload_json: str
    feed_item_id: int | None
    #: The item's position in its user's feed (the relay's entries; None for a hand XADD).
    seq: int | None
    created_at: str | None
    #: The item a ``transaction_updated`` entry updates (the relay's entries only).
    ref: int | None = None

    @property
    def persisted(self) -> bool:
        """True when the entry names a committed feed item (the relay's); False for a hand XADD."""
        return self.feed_item_id is not None


def parse_entry(entry_id: str, fields: Mapping[str, str]) -> StreamItem:
    """The entry's meaning, or PoisonEntry when a field is missing or malformed."""
    user_id = _decimal(fields.get("user_id"), "user_id", required=True)
    assert user_id is not None
    feed_item_id = _decimal(fields.get("feed_item_id"), "feed_item_id", required=False)
    seq = _decimal(fields.get("seq"), "seq", required=False)
    ref = _decimal(fields.get("ref"), "ref", required=False)
    type_ = fields.get("type") or FEED_ITEM_TYPE
    if len(type_) > MAX_TYPE_LENGTH:
        raise PoisonEntry(f"type is longer than {MAX_TYPE_LENGTH} characters")
    payload_json = fields.get("payload")
    if payload_json is None:
        raise PoisonEntry("payload is missing")
    _check_json(payload_json)
    return StreamItem(
        entry_id=entry_id,
        user_id=user_id,
        type=type_,
        payload_json=payload_json,
        feed_item_id=feed_item_id,
        seq=seq,
        created_at=fields.get("created_at") or None,
        ref=ref,
    )


def entry_millis(entry_id: str) -> int:
    """The Unix time in milliseconds at which Redis appended ``entry_id`` (``<ms>-<seq>``)."""
    return int(entry_id.partition("-")[0])


def _decimal(raw: str | None, name: str, *, required: bool) -> int | None:
    if raw is None or raw == "":
        if required:
            raise PoisonEntry(f"{name} is missing")
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_ID_DIGITS:
        raise PoisonEntry(f"{name} is not a positive integer")
    value = int(raw)
    if value == 0:
        raise PoisonEntry(f"{name} is not a positive integer")
    return value


def _check_json(text: str) -> None:
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise PoisonEntry(f"payload is not valid JSON: {exc}") from None
    if "\\u0000" in text:
        # PostgreSQL's jsonb refuses NUL characters: the entry could never be stored or replayed.
        raise PoisonEntry("payload contains a NUL character")
