"""What an Alchemy delivery becomes: transfers keyed by their natural keys, quarantined activities.

Pure values; ``domain.alchemy`` makes them from the bytes Alchemy sends. ``Transfer.transfer_key``
is what makes a repeated or split delivery idempotent (docs/design/ingest.md, "Natural keys").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = [
    "CATEGORIES",
    "QUARANTINE_REASONS",
    "TOKEN_CATEGORIES",
    "Quarantined",
    "Transfer",
    "Webhook",
    "metric_category",
]

TOKEN_CATEGORIES = frozenset({"token", "erc20", "erc721", "erc1155", "specialnft"})
#: Categories counted under their own metric label; anything else is counted as ``other``.
CATEGORIES = frozenset({"external", "internal", *TOKEN_CATEGORIES})
#: Why an activity was quarantined (the ``reason`` label of ``webhook_activities_quarantined_total``).
QUARANTINE_REASONS = frozenset(
    {
        "wrong_type",
        "bad_value",
        "nul_character",
        "too_deep",
        "no_network",
        "not_a_list",
        "refused_by_database",
    }
)


@dataclass(frozen=True, slots=True)
class Transfer:
    """One value or token movement, as stored in ``transactions`` and shown in feed items."""

    network: str
    #: The transaction hash; None when the activity named none (keyed by event and position).
    hash: str | None
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
    #: ``<event id>:<position>`` for an activity without a hash: its key (see ``transfer_key``).
    origin: str | None = None
    #: Where the activity was in its delivery's ``event.activity``.
    position: int = 0

    @property
    def hash_key(self) -> str:
        """The ``transactions.hash`` column: the hash, or '' for hash-less activities."""
        return self.hash or ""

    @property
    def transfer_key(self) -> str:
        """The part of the natural key that tells transfers of one transaction apart.

        Token transfers are keyed by log index, internal ones by trace address, the external one
        by its category. When Alchemy omits the field a key is built from (a token transfer
        without its log, an internal one without its trace address), the key falls back to what
        the transfer moved, which is still stable across redeliveries of the same activity. An
        activity without a hash is known only by its delivery: event id and position.
        """
        if self.hash is None:
            return f"event:{self.origin}"
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
class Quarantined:
    """An activity the service cannot use: kept raw with why, to be replayed by a later parser."""

    position: int
    #: One of :data:`QUARANTINE_REASONS` (a metric label).
    reason: str
    #: What and where, for the operator (``chainfeed quarantine list``); never the value itself.
    detail: str
    #: The activity's JSON text exactly as sent.
    raw: str


@dataclass(frozen=True, slots=True)
class Webhook:
    """One delivery: its transfers (deduplicated by natural key, in arrival order) and quarantine."""

    event_id: str
    webhook_id: str | None
    type: str | None
    network: str | None
    created_at: str | None
    activity_count: int
    transfers: tuple[Transfer, ...]
    #: ``event.error`` as text when Alchemy sent a notice (e.g. capacity limit) instead of activity.
    notice: str | None = None
    quarantined: tuple[Quarantined, ...] = ()


def metric_category(category: str) -> str:
    """The ``category`` label for metrics: a known category, or ``other`` (bounded cardinality)."""
    return category if category in CATEGORIES else "other"
