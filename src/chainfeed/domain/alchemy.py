"""Alchemy Notify deliveries (``ADDRESS_ACTIVITY``, and NFT activity's shape) -> transfers and quarantine.

Pure: bytes in, values out. Alchemy pauses a webhook that keeps failing, so only a body that is
not a delivery at all (not JSON, not an object, no ``id`` or ``event``) raises
:class:`~chainfeed.errors.ValidationError` (answered 400). Inside a delivery, absent and null
fields are normal (Alchemy omits them); an activity the service cannot use (a field of the wrong
type, a malformed hash or quantity, a NUL character PostgreSQL would refuse) becomes a
:class:`Quarantined` entry, kept raw with its reason, and the rest of the delivery is stored.
Display-only fields (``value``, ``asset``, ``decimals``, ``rawValue``) of an odd type are dropped
instead: the raw activity keeps them.

Natural keys (what makes a repeated or split delivery idempotent, see ``Transfer.transfer_key``):

- token transfers (``token``/``erc20``/``erc721``/``erc1155``, and unknown categories): the log
  index within the tx, else contract + token id + from/to/amount;
- internal transfers: the trace address (``typeTraceAddress``, e.g. ``call_0_1``), else from/to/amount;
- external transfers: the category (one top-level transfer per transaction);
- an activity without a transaction hash (``hash`` or ``log.transactionHash``): the delivery's
  event id and the activity's position in it, which Alchemy's retries of the event keep.

A notice with ``event.error`` and no activity (Alchemy's capacity-limit message) parses to a
:class:`Webhook` whose ``notice`` is set and whose ``transfers`` are empty.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from chainfeed.domain.transfers import Quarantined, Transfer, Webhook
from chainfeed.errors import ValidationError

__all__ = ["ADDRESS_ACTIVITY", "parse_activity", "parse_webhook"]

ADDRESS_ACTIVITY = "ADDRESS_ACTIVITY"
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_NUL = re.compile(rb"\\u0000", re.IGNORECASE)
_MAX_BIGINT = 2**63 - 1
_MAX_ID_LENGTH = 200
_MAX_TEXT = 200  # a network name, webhook id or type longer than this is not one


class _Log(msgspec.Struct, rename="camel"):
    block_hash: str | None = None
    log_index: str | int | None = None
    removed: bool | None = None
    transaction_hash: str | None = None


class _RawContract(msgspec.Struct, rename="camel"):
    raw_value: Any = None
    address: str | None = None
    decimals: Any = None


class _Erc1155Token(msgspec.Struct, rename="camel"):
    token_id: str | None = None
    value: Any = None


class _Activity(msgspec.Struct, rename="camel"):
    """What the keys and the feed need, typed; display-only fields are ``Any`` and coerced."""

    hash: str | None = None
    category: str | None = None
    from_address: str | None = None
    to_address: str | None = None
    block_num: str | int | None = None
    value: Any = None
    asset: Any = None
    raw_contract: _RawContract | None = None
    contract_address: str | None = None  # NFT activity names the contract here
    log: _Log | None = None
    type_trace_address: str | None = None
    erc721_token_id: str | None = None
    erc1155_metadata: list[_Erc1155Token] | None = None


class _Event(msgspec.Struct):
    network: Any = None
    activity: msgspec.Raw = msgspec.Raw(b"null")
    error: Any = None


class _Envelope(msgspec.Struct, rename="camel"):
    id: str
    event: _Event
    webhook_id: Any = None
    created_at: Any = None
    type: Any = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_activity_decoder = msgspec.json.Decoder(_Activity)
_activities_decoder = msgspec.json.Decoder(list[msgspec.Raw] | None)


class _Unusable(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_webhook(body: bytes) -> Webhook:
    """Split a delivery into transfers and quarantine; ValidationError only when it is not one."""
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"malformed webhook: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"malformed webhook: body is not valid JSON ({exc})") from None
    except RecursionError:  # msgspec recurses into unknown fields: thousands of levels overflow
        raise ValidationError("malformed webhook: JSON nested too deeply") from None
    if not envelope.id or len(envelope.id) > _MAX_ID_LENGTH or "\x00" in envelope.id:
        raise ValidationError(
            f"malformed webhook: id must be 1-{_MAX_ID_LENGTH} characters without NUL - at `$.id`"
        )
    event = envelope.event
    network = _text_field(event.network)
    notice = None if event.error is None else _text(event.error)
    transfers: dict[tuple[str, str], Transfer] = {}
    quarantined: list[Quarantined] = []
    try:
        raw_activities = _activities_decoder.decode(event.activity) or []
    except (msgspec.ValidationError, RecursionError):
        raw_activities = []
        detail = "event.activity is not a list - at `$.event.activity`"
        quarantined.append(Quarantined(0, "not_a_list", detail, bytes(event.activity).decode()))
    for position, raw in enumerate(raw_activities):
        outcome = parse_activity(raw, position, event_id=envelope.id, network=network)
        if isinstance(outcome, Quarantined):
            quarantined.append(outcome)
        else:
            # A later copy of the same transfer in one payload carries the newer state (e.g. removed).
            transfers[(outcome.hash_key, outcome.transfer_key)] = outcome
    return Webhook(
        event_id=envelope.id,
        webhook_id=_text_field(envelope.webhook_id),
        type=_text_field(envelope.type),
        network=network,
        created_at=_text_field(envelope.created_at),
        activity_count=len(raw_activities) or len(quarantined),
        transfers=tuple(transfers.values()),
        notice=notice,
        quarantined=tuple(quarantined),
    )


def parse_activity(
    raw: bytes | msgspec.Raw, position: int, *, event_id: str, network: str | None
) -> Transfer | Quarantined:
    """One activity of delivery ``event_id`` (at ``position``): a transfer, or why not.

    Also what ``chainfeed quarantine replay`` runs on a stored activity, with the delivery's
    event id and network, so a replayed activity gets the key its first delivery would have.
    """
    try:
        return _transfer(raw, position, event_id=event_id, network=network)
    except _Unusable as exc:
        return Quarantined(position, exc.reason, exc.detail, bytes(raw).decode())


def _transfer(raw: bytes | msgspec.Raw, index: int, *, event_id: str, network: str | None) -> Transfer:
    where = f"$.event.activity[{index}]"
    if _NUL.search(bytes(raw)):
        raise _Unusable("nul_character", f"a string holds a NUL character (\\u0000) - at `{where}`")
    if network is None:
        raise _Unusable("no_network", "the delivery names no event.network - at `$.event.network`")
    try:
        activity = _activity_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        message = message.replace("`$", f"`{where}") if " - at `$" in message else f"{message} - at `{where}`"
        raise _Unusable("wrong_type", message) from None
    except RecursionError:
        raise _Unusable("too_deep", f"JSON nested too deeply - at `{where}`") from None
    log = activity.log or _Log()
    contract = activity.raw_contract or _RawContract()
    tx_hash = activity.hash or log.transaction_hash
    if tx_hash is not None and not _HASH.fullmatch(tx_hash):
        raise _Unusable("bad_value", f"hash must be 0x and 64 hex digits - at `{where}.hash`")
    category = (activity.category or "").strip().lower() or "unknown"
    erc1155 = tuple(
        (_lower(t.token_id), _lower(_text_field(t.value))) for t in activity.erc1155_metadata or ()
    )
    token_id = _lower(activity.erc721_token_id) or (erc1155[0][0] if erc1155 else None)
    return Transfer(
        network=network,
        hash=tx_hash.lower() if tx_hash else None,
        category=category[:_MAX_TEXT],
        from_address=_lower(activity.from_address),
        to_address=_lower(activity.to_address),
        value=_number(activity.value),
        asset=_text_field(activity.asset),
        block_num=_quantity(activity.block_num, f"{where}.blockNum"),
        block_hash=_lower(log.block_hash),
        log_index=_quantity(log.log_index, f"{where}.log.logIndex"),
        token_id=token_id,
        removed=bool(log.removed),
        contract=_lower(contract.address or activity.contract_address),
        raw_value=_text_field(contract.raw_value),
        decimals=_decimals(contract.decimals),
        trace_address=activity.type_trace_address,
        erc1155=erc1155,
        raw=raw if isinstance(raw, msgspec.Raw) else msgspec.Raw(raw),
        origin=None if tx_hash else f"{event_id}:{index}",
        position=index,
    )


def _quantity(raw: str | int | None, where: str) -> int | None:
    """A JSON-RPC quantity (``0x``-hex string or integer) that fits PostgreSQL's bigint."""
    if raw is None:
        return None
    try:
        value = raw if isinstance(raw, int) else int(raw, 16) if raw.lower().startswith("0x") else int(raw)
    except ValueError:
        raise _Unusable("bad_value", f"expected a hex quantity - at `{where}`") from None
    if not 0 <= value <= _MAX_BIGINT:
        raise _Unusable("bad_value", f"quantity out of range - at `{where}`")
    return value


def _number(raw: Any) -> float | None:
    """A display amount: a finite number (or a numeric string), else None."""
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            return None
    if isinstance(raw, int | float) and math.isfinite(raw):
        return float(raw)
    return None


def _decimals(raw: Any) -> int | None:
    """Token decimals; display-only, so an odd value is dropped rather than refused."""
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        value = raw if isinstance(raw, int) else int(raw, 0) if isinstance(raw, str) else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value <= 255 else None


def _text_field(raw: Any) -> str | None:
    """A short text field of the envelope or a display field: a non-empty string, else None."""
    return raw if isinstance(raw, str) and raw and len(raw) <= _MAX_TEXT and "\x00" not in raw else None


def _lower(raw: str | None) -> str | None:
    return raw.lower() if raw else None


def _text(raw: Any) -> str:
    return raw if isinstance(raw, str) else msgspec.json.encode(raw).decode()
