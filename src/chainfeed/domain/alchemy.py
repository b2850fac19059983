"""Alchemy Notify v2 ``ADDRESS_ACTIVITY`` payloads -> transfers keyed by their natural keys.

Pure: bytes in, values out, :class:`~chainfeed.errors.ValidationError` (naming the JSON path) for
anything we cannot safely store. Alchemy omits null fields, so every activity field but ``hash``
and ``category`` may be absent.

Natural keys (what makes a repeated or split delivery idempotent, see ``transfer_key``):

- token transfers (``token``/``erc20``/``erc721``/``erc1155``): the log index within the tx,
- internal transfers: the trace address (``typeTraceAddress``, e.g. ``call_0_1``),
- external transfers: the category (one top-level transfer per transaction).

A notice with ``event.error`` and no activity (Alchemy's capacity-limit message) parses to a
:class:`Webhook` whose ``notice`` is set and whose ``transfers`` are empty.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from chainfeed.errors import ValidationError

__all__ = ["ADDRESS_ACTIVITY", "CATEGORIES", "Transfer", "Webhook", "metric_category", "parse_webhook"]

ADDRESS_ACTIVITY = "ADDRESS_ACTIVITY"
TOKEN_CATEGORIES = frozenset({"token", "erc20", "erc721", "erc1155", "specialnft"})
#: Categories counted under their own metric label; anything else is counted as ``other``.
CATEGORIES = frozenset({"external", "internal", *TOKEN_CATEGORIES})

_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_MAX_BIGINT = 2**63 - 1
_MAX_ID_LENGTH = 200


class _Log(msgspec.Struct, rename="camel"):
    block_hash: str | None = None
    log_index: str | int | None = None
    removed: bool | None = None


class _RawContract(msgspec.Struct, rename="camel"):
    raw_value: str | None = None
    address: str | None = None
    decimals: int | str | None = None


class _Erc1155Token(msgspec.Struct, rename="camel"):
    token_id: str | None = None
    value: str | None = None


class _Activity(msgspec.Struct, rename="camel"):
    hash: str
    category: str
    from_address: str | None = None
    to_address: str | None = None
    block_num: str | int | None = None
    value: float | None = None
    asset: str | None = None
    raw_contract: _RawContract | None = None
    log: _Log | None = None
    type_trace_address: str | None = None
    erc721_token_id: str | None = None
    erc1155_metadata: list[_Erc1155Token] | None = None


class _Event(msgspec.Struct):
    network: str | None = None
    activity: list[msgspec.Raw] | None = None
    error: Any = None


class _Envelope(msgspec.Struct, rename="camel"):
    id: str
    event: _Event
    webhook_id: str | None = None
    created_at: str | None = None
    type: str | None = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_activity_decoder = msgspec.json.Decoder(_Activity)


@dataclass(frozen=True, slots=True)
class Transfer:
    """One value or token movement, as stored in ``transactions`` and shown in feed items."""

    network: str
    hash: str
    category: str
    from_address: str | None
    to_address: str | None
    value: float | None
    asset: str | None
    block_num: int | None
    block_hash: str | None
    log_index: int | None
    token_id: str | None
    removed: bool
    contract: str | None
    raw_value: str | None
    decimals: int | None
    trace_address: str | None
    erc1155: tuple[tuple[str | None, str | None], ...]
    #: The activity exactly as Alchemy sent it (kept in ``transactions.raw``).
    raw: msgspec.Raw

    @property
    def transfer_key(self) -> str:
        """The part of the natural key that tells transfers of one transaction apart.

        Token transfers are keyed by log index, internal ones by trace address, the external one
        by its category. When Alchemy omits the field a key is built from (a token transfer
        without its log, an internal one without its trace address), the key falls back to what
        the transfer moved, which is still stable across redeliveries of the same activity.
        """
        if self.category == "external":
            return "external"
        moved = f"{self.from_address}:{self.to_address}:{self.raw_value or self.value}"
        if self.category == "internal":
            return f"trace:{self.trace_address}" if self.trace_address else f"internal:{moved}"
        if self.log_index is not None:
            return f"log:{self.log_index}"
        return f"{self.category}:{self.contract}:{self.token_id}:{moved}"

    def payload(self) -> dict[str, Any]:
        """What every watcher sees of this transfer (the per-watcher fields are added on insert)."""
        body: dict[str, Any] = {
            "network": self.network,
            "hash": self.hash,
            "category": self.category,
            "from": self.from_address,
            "to": self.to_address,
            "value": self.value,
            "asset": self.asset,
            "block_num": self.block_num,
            "block_hash": self.block_hash,
            "log_index": self.log_index,
            "token_id": self.token_id,
            "removed": self.removed,
            "contract": self.contract,
            "raw_value": self.raw_value,
            "decimals": self.decimals,
            "trace_address": self.trace_address,
        }
        if self.erc1155:
            body["tokens"] = [{"token_id": token, "value": value} for token, value in self.erc1155]
        return body


@dataclass(frozen=True, slots=True)
class Webhook:
    """One delivery: its envelope and its transfers, deduplicated by natural key in arrival order."""

    event_id: str
    webhook_id: str | None
    type: str | None
    network: str | None
    created_at: str | None
    activity_count: int
    transfers: tuple[Transfer, ...]
    #: ``event.error`` as text when Alchemy sent a notice (e.g. capacity limit) instead of activity.
    notice: str | None = None


def metric_category(category: str) -> str:
    """The ``category`` label for metrics: a known category, or ``other`` (bounded cardinality)."""
    return category if category in CATEGORIES else "other"


def parse_webhook(body: bytes) -> Webhook:
    """Parse an ADDRESS_ACTIVITY delivery; ValidationError saying what and where when malformed."""
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"malformed webhook: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"malformed webhook: body is not valid JSON ({exc})") from None
    except RecursionError:  # msgspec recurses into unknown fields: thousands of levels overflow
        raise ValidationError("malformed webhook: JSON nested too deeply") from None
    if not envelope.id or len(envelope.id) > _MAX_ID_LENGTH:
        raise ValidationError(f"malformed webhook: id must be 1-{_MAX_ID_LENGTH} characters - at `$.id`")
    if envelope.type is not None and envelope.type != ADDRESS_ACTIVITY:
        raise ValidationError(f"unsupported webhook type {envelope.type!r}: expected {ADDRESS_ACTIVITY}")
    event = envelope.event
    raw_activities = event.activity or []
    notice = None if event.error is None else _text(event.error)
    if raw_activities and not event.network:
        raise ValidationError("malformed webhook: event.network is required with activity - at `$.event`")
    transfers: dict[tuple[str, str], Transfer] = {}
    for index, raw in enumerate(raw_activities):
        transfer = _transfer(raw, index, network=event.network or "")
        # A later copy of the same transfer in one payload carries the newer state (e.g. removed).
        transfers[(transfer.hash, transfer.transfer_key)] = transfer
    return Webhook(
        event_id=envelope.id,
        webhook_id=envelope.webhook_id,
        type=envelope.type,
        network=event.network,
        created_at=envelope.created_at,
        activity_count=len(raw_activities),
        transfers=tuple(transfers.values()),
        notice=notice,
    )


def _transfer(raw: msgspec.Raw, index: int, *, network: str) -> Transfer:
    where = f"$.event.activity[{index}]"
    try:
        activity = _activity_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        message = message.replace("`$", f"`{where}") if " - at `$" in message else f"{message} - at `{where}`"
        raise ValidationError(f"malformed webhook: {message}") from None
    except msgspec.DecodeError as exc:  # pragma: no cover - the envelope already parsed this JSON
        raise ValidationError(f"malformed webhook: {exc} - at `{where}`") from None
    except RecursionError:
        raise ValidationError(f"malformed webhook: JSON nested too deeply - at `{where}`") from None
    if not _HASH.fullmatch(activity.hash):
        raise ValidationError(f"malformed webhook: hash must be 0x and 64 hex digits - at `{where}.hash`")
    log = activity.log or _Log()
    contract = activity.raw_contract or _RawContract()
    category = activity.category.strip().lower()
    if not category:
        raise ValidationError(f"malformed webhook: category must not be empty - at `{where}.category`")
    erc1155 = tuple((_lower(t.token_id), _lower(t.value)) for t in activity.erc1155_metadata or ())
    token_id = _lower(activity.erc721_token_id) or (erc1155[0][0] if erc1155 else None)
    return Transfer(
        network=network,
        hash=activity.hash.lower(),
        category=category,
        from_address=_lower(activity.from_address),
        to_address=_lower(activity.to_address),
        value=activity.value if activity.value is not None and math.isfinite(activity.value) else None,
        asset=activity.asset,
        block_num=_quantity(activity.block_num, f"{where}.blockNum"),
        block_hash=_lower(log.block_hash),
        log_index=_quantity(log.log_index, f"{where}.log.logIndex"),
        token_id=token_id,
        removed=bool(log.removed),
        contract=_lower(contract.address),
        raw_value=contract.raw_value,
        decimals=_decimals(contract.decimals),
        trace_address=activity.type_trace_address,
        erc1155=erc1155,
        raw=raw,
    )


def _quantity(raw: str | int | None, where: str) -> int | None:
    """A JSON-RPC quantity (``0x``-hex string or integer) that fits PostgreSQL's bigint."""
    if raw is None:
        return None
    try:
        value = raw if isinstance(raw, int) else int(raw, 16) if raw.lower().startswith("0x") else int(raw)
    except ValueError:
        raise ValidationError(f"malformed webhook: expected a hex quantity - at `{where}`") from None
    if not 0 <= value <= _MAX_BIGINT:
        raise ValidationError(f"malformed webhook: quantity out of range - at `{where}`")
    return value


def _decimals(raw: int | str | None) -> int | None:
    """Token decimals; display-only, so an odd value is dropped rather than refused."""
    if raw is None:
        return None
    try:
        value = raw if isinstance(raw, int) else int(raw, 0)
    except ValueError:
        return None
    return value if 0 <= value <= 255 else None


def _lower(raw: str | None) -> str | None:
    return raw.lower() if raw else None


def _text(raw: Any) -> str:
    return raw if isinstance(raw, str) else msgspec.json.encode(raw).decode()
