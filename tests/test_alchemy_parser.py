"""Parsing Alchemy ADDRESS_ACTIVITY payloads (pure: no servers) into transfers with natural keys.

The payloads follow the examples in Alchemy's "Address Activity Webhook" reference and Notify FAQ.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chainfeed.domain.alchemy import parse_webhook
from chainfeed.domain.transfers import metric_category
from chainfeed.errors import ValidationError

TX = "0x7a4a39da2a3fa1fc2ef88fd1eaea070286ed2aba21e0419dcfb6d5c5d9f02a72"
BLOCK_HASH = "0xa99ec54413bd3db3f9bdb0c1ad3ab1400ee0ecefb47803e17f9d33bc4d0a1e91"

#: Alchemy's documented ERC-20 example (USDC on mainnet).
USDC_ACTIVITY: dict[str, Any] = {
    "blockNum": "0xdf34a3",
    "hash": TX,
    "fromAddress": "0x503828976d22510aad0201ac7ec88293211d23da",
    "toAddress": "0xbe3f4b43db5eb49d1f48f53443b9abce45da3b79",
    "value": 293.092129,
    "erc721TokenId": None,
    "erc1155Metadata": None,
    "asset": "USDC",
    "category": "token",
    "rawContract": {
        "rawValue": "0x0000000000000000000000000000000000000000000000000000000011783b21",
        "address": "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
        "decimals": 6,
    },
    "typeTraceAddress": None,
    "log": {
        "address": "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
        "topics": [
            "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
            "0x000000000000000000000000503828976d22510aad0201ac7ec88293211d23da",
            "0x000000000000000000000000be3f4b43db5eb49d1f48f53443b9abce45da3b79",
        ],
        "data": "0x0000000000000000000000000000000000000000000000000000000011783b21",
        "blockNumber": "0xdf34a3",
        "transactionHash": TX,
        "transactionIndex": "0x46",
        "blockHash": BLOCK_HASH,
        "logIndex": "0x6e",
        "removed": False,
    },
}

EXTERNAL_ACTIVITY: dict[str, Any] = {
    "fromAddress": "0xd8da6bf26964af9d7eed9e10e41856af7f5f8c8e",
    "toAddress": "0x4838B106FCe9647Bdf1E7877BF73cE8B0BAD5f97",
    "blockNum": "0x12a05f2",
    "hash": "0x" + "ab" * 32,
    "value": 0.1,
    "asset": "ETH",
    "category": "external",
    "rawContract": {"rawValue": "0x16345785d8a0000", "decimals": 18},
}

INTERNAL_ACTIVITY: dict[str, Any] = {
    "fromAddress": "0x7a250d5630b4cf539739df2c5dacb4c659f2488d",
    "toAddress": "0xd8da6bf26964af9d7eed9e10e41856af7f5f8c8e",
    "blockNum": "0x12a05f2",
    "hash": "0x" + "cd" * 32,
    "value": 0.05,
    "asset": "ETH",
    "category": "internal",
    "typeTraceAddress": "call_0_1",
    "rawContract": {"rawValue": "0xb1a2bc2ec50000", "decimals": 18},
}

#: Shaped like Alchemy's documented NFT example (category ``token`` with ``erc721TokenId``).
ERC721_ACTIVITY: dict[str, Any] = {
    "category": "erc721",
    "fromAddress": "0x59479de9d374bdbcba6c791e5d036591976fe422",
    "toAddress": "0x59479de9d374bdbcba6c791e5d036591976fe425",
    "erc721TokenId": "0x1",
    "hash": "0x" + "ef" * 32,
    "blockNum": "0x1a2b3c",
    "rawContract": {"rawValue": "0x", "address": "0x93C46aA4DdfD0413d95D0eF3c478982997cE9861"},
    "log": {
        "removed": False,
        "address": "0x93c46aa4ddfd0413d95d0ef3c478982997ce9861",
        "data": "0x",
        "logIndex": "0x3",
        "blockHash": BLOCK_HASH,
    },
}

ERC1155_ACTIVITY: dict[str, Any] = {
    "category": "erc1155",
    "fromAddress": "0x15dd13f3c4c5279222b5f09ed1b9e9340ed17185",
    "toAddress": "0xfae46f94ee7b2acb497cecaff6cff17f621c693d",
    "hash": "0x" + "12" * 32,
    "blockNum": "0x1a2b3d",
    "erc1155Metadata": [
        {"tokenId": "0x15DD13F3C4C5279222B5F09ED1B9E9340ED17185000000000000020000000001", "value": "0x1"},
        {"tokenId": "0x2", "value": "0x5"},
    ],
    "rawContract": {"rawValue": None, "address": "0x88b48f654c30e99bc2e4a1559b4dcf1ad93fa656"},
    "log": {"logIndex": "0x9", "removed": False, "blockHash": BLOCK_HASH},
}


def envelope(*activities: dict[str, Any], event_id: str = "whevt_vq499kv7elmlbp2v", **event: Any) -> bytes:
    body = {
        "webhookId": "wh_k63lg72rxda78gce",
        "id": event_id,
        "createdAt": "2024-01-23T07:42:26.411977228Z",
        "type": "ADDRESS_ACTIVITY",
        "event": {"network": "ETH_MAINNET", "activity": list(activities), **event},
    }
    return json.dumps(body).encode()


def test_documented_erc20_example() -> None:
    webhook = parse_webhook(envelope(USDC_ACTIVITY))
    assert (webhook.event_id, webhook.webhook_id, webhook.network) == (
        "whevt_vq499kv7elmlbp2v",
        "wh_k63lg72rxda78gce",
        "ETH_MAINNET",
    )
    assert webhook.activity_count == 1
    assert webhook.notice is None
    (transfer,) = webhook.transfers
    assert transfer.transfer_key == "log:110"
    assert transfer.payload() == {
        "network": "ETH_MAINNET",
        "hash": TX,
        "category": "token",
        "from": "0x503828976d22510aad0201ac7ec88293211d23da",
        "to": "0xbe3f4b43db5eb49d1f48f53443b9abce45da3b79",
        "value": 293.092129,
        "asset": "USDC",
        "block_num": 0xDF34A3,
        "block_hash": BLOCK_HASH,
        "log_index": 110,
        "token_id": None,
        "removed": False,
        "contract": "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
        "raw_value": "0x0000000000000000000000000000000000000000000000000000000011783b21",
        "decimals": 6,
        "trace_address": None,
    }
    # The activity is kept byte for byte as Alchemy sent it.
    assert json.loads(bytes(transfer.raw)) == USDC_ACTIVITY


def test_external_is_keyed_by_category_and_addresses_lower_cased() -> None:
    (transfer,) = parse_webhook(envelope(EXTERNAL_ACTIVITY)).transfers
    assert transfer.transfer_key == "external"
    assert transfer.to_address == "0x4838b106fce9647bdf1e7877bf73ce8b0bad5f97"
    assert (transfer.block_num, transfer.block_hash, transfer.log_index) == (0x12A05F2, None, None)
    assert transfer.decimals == 18


def test_internal_is_keyed_by_trace_address() -> None:
    (transfer,) = parse_webhook(envelope(INTERNAL_ACTIVITY)).transfers
    assert transfer.transfer_key == "trace:call_0_1"
    assert transfer.payload()["trace_address"] == "call_0_1"


def test_erc721_carries_its_token_id() -> None:
    (transfer,) = parse_webhook(envelope(ERC721_ACTIVITY)).transfers
    assert transfer.transfer_key == "log:3"
    assert transfer.token_id == "0x1"
    assert transfer.contract == "0x93c46aa4ddfd0413d95d0ef3c478982997ce9861"
    assert transfer.value is None


def test_erc1155_carries_every_token_and_the_first_as_token_id() -> None:
    (transfer,) = parse_webhook(envelope(ERC1155_ACTIVITY)).transfers
    assert transfer.transfer_key == "log:9"
    assert transfer.token_id == "0x15dd13f3c4c5279222b5f09ed1b9e9340ed17185000000000000020000000001"
    assert transfer.payload()["tokens"] == [
        {"token_id": "0x15dd13f3c4c5279222b5f09ed1b9e9340ed17185000000000000020000000001", "value": "0x1"},
        {"token_id": "0x2", "value": "0x5"},
    ]


def test_one_transaction_yields_one_transfer_per_natural_key() -> None:
    """Transfers of one tx (external + token logs) stay apart; an exact repeat collapses into one."""
    second_log = {**USDC_ACTIVITY, "log": {**USDC_ACTIVITY["log"], "logIndex": "0x6f"}}
    same_tx_external = {**EXTERNAL_ACTIVITY, "hash": TX}
    webhook = parse_webhook(envelope(USDC_ACTIVITY, second_log, same_tx_external, USDC_ACTIVITY))
    assert webhook.activity_count == 4
    assert [t.transfer_key for t in webhook.transfers] == ["log:110", "log:111", "external"]


def test_later_copy_in_one_payload_wins() -> None:
    removed = {**USDC_ACTIVITY, "log": {**USDC_ACTIVITY["log"], "removed": True}}
    (transfer,) = parse_webhook(envelope(USDC_ACTIVITY, removed)).transfers
    assert transfer.removed is True


def test_absent_and_null_fields() -> None:
    """Alchemy omits null fields: only hash and category are needed; everything else may be missing."""
    minimal = {"hash": "0x" + "01" * 32, "category": "external"}
    nulls = {
        "hash": "0x" + "02" * 32,
        "category": "token",
        "fromAddress": None,
        "toAddress": None,
        "blockNum": None,
        "value": None,
        "asset": None,
        "rawContract": None,
        "log": None,
        "erc721TokenId": None,
        "erc1155Metadata": None,
        "typeTraceAddress": None,
    }
    internal_without_trace = {**INTERNAL_ACTIVITY, "typeTraceAddress": None}
    token_log_without_index = {**USDC_ACTIVITY, "log": {"removed": False}}
    transfers = parse_webhook(
        envelope(minimal, nulls, internal_without_trace, token_log_without_index)
    ).transfers
    first, second, third, fourth = transfers
    assert first.payload()["from"] is None
    assert first.transfer_key == "external"
    assert (second.removed, second.block_num, second.contract) == (False, None, None)
    # Fallback keys stay stable across redeliveries: built from what moved.
    assert second.transfer_key == "token:None:None:None:None:None"
    assert third.transfer_key.startswith("internal:0x7a250d5630b4cf539739df2c5dacb4c659f2488d:")
    assert fourth.transfer_key.startswith("token:0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48:")


def test_integer_quantities_are_accepted() -> None:
    activity = {**USDC_ACTIVITY, "blockNum": 14628003, "log": {**USDC_ACTIVITY["log"], "logIndex": 110}}
    (transfer,) = parse_webhook(envelope(activity)).transfers
    assert (transfer.block_num, transfer.transfer_key) == (14628003, "log:110")


def test_capacity_limit_notice_has_no_transfers() -> None:
    body = json.dumps(
        {
            "webhookId": "wh_127lzhz0dfwwimwe",
            "id": "whevt_55i2al4sc2ivp1m8",
            "createdAt": "2022-12-05T23:43:16.379Z",
            "type": "ADDRESS_ACTIVITY",
            "event": {"error": "Monthly capacity limit exceeded. Visit the dashboard to upgrade."},
        }
    ).encode()
    webhook = parse_webhook(body)
    assert webhook.notice == "Monthly capacity limit exceeded. Visit the dashboard to upgrade."
    assert (webhook.transfers, webhook.activity_count, webhook.network) == ((), 0, None)


def test_empty_activity_is_fine() -> None:
    webhook = parse_webhook(envelope())
    assert (webhook.transfers, webhook.notice) == ((), None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "Expected `object`, got `array`"),
        (b'{"event": {}}', "missing required field `id`"),
        (b'{"id": "x"}', "missing required field `event`"),
        (b'{"id": "x", "event": []}', "at `$.event`"),
        (b'{"id": "", "event": {}}', "id must be"),
        (b'{"id": "a\\u0000b", "event": {}}', "without NUL"),
    ],
)
def test_only_what_is_not_a_delivery_raises(body: bytes, message: str) -> None:
    with pytest.raises(ValidationError, match=r"malformed") as info:
        parse_webhook(body)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("change", "reason", "detail"),
    [
        ({"hash": 7}, "wrong_type", "got `int` - at `$.event.activity[1].hash`"),
        (
            {"hash": "0x1234"},
            "bad_value",
            "hash must be 0x and 64 hex digits - at `$.event.activity[1].hash`",
        ),
        ({"category": 7}, "wrong_type", "got `int` - at `$.event.activity[1].category`"),
        ({"fromAddress": ["0xabc"]}, "wrong_type", "got `array` - at `$.event.activity[1].fromAddress`"),
        ({"blockNum": "0xzz"}, "bad_value", "expected a hex quantity - at `$.event.activity[1].blockNum`"),
        ({"blockNum": "0x" + "f" * 20}, "bad_value", "quantity out of range"),
        ({"log": {"logIndex": "-0x1"}}, "bad_value", "at `$.event.activity[1].log.logIndex`"),
        (
            {"erc1155Metadata": [{"tokenId": 5}]},
            "wrong_type",
            "at `$.event.activity[1].erc1155Metadata[0].tokenId`",
        ),
        ({"asset": "E\u0000TH"}, "nul_character", "NUL character"),
    ],
)
def test_an_unusable_activity_is_quarantined_and_the_rest_kept(
    change: dict[str, Any], reason: str, detail: str
) -> None:
    body = envelope(EXTERNAL_ACTIVITY, {**USDC_ACTIVITY, **change}).replace(b"\\\\u0000", b"\\u0000")
    webhook = parse_webhook(body)
    assert [t.category for t in webhook.transfers] == ["external"]
    (entry,) = webhook.quarantined
    assert (entry.position, entry.reason) == (1, reason)
    assert detail in entry.detail, entry.detail
    assert json.loads(entry.raw)["category"] == change.get("category", "token")
    assert webhook.activity_count == 2


def test_odd_display_fields_are_dropped_not_quarantined() -> None:
    odd = {
        **USDC_ACTIVITY,
        "value": "lots",
        "asset": 5,
        "rawContract": {**USDC_ACTIVITY["rawContract"], "decimals": []},
    }
    (transfer,) = parse_webhook(envelope(odd)).transfers
    assert (transfer.value, transfer.asset, transfer.decimals, transfer.transfer_key) == (
        None,
        None,
        None,
        "log:110",
    )
    numeric = parse_webhook(envelope({**USDC_ACTIVITY, "value": "1.25"})).transfers[0]
    assert numeric.value == 1.25


def test_a_hash_less_activity_is_keyed_by_its_delivery_and_position() -> None:
    """Alchemy's NFT example: no hash, blockNum, value or asset, a log without transactionHash or
    logIndex, the contract in contractAddress. Keyed by event id and position: a retry of the
    event gets the same keys, two such transfers in one delivery stay two."""
    nft = {
        "fromAddress": "0x0000000000000000000000000000000000000000",
        "toAddress": "0x15dd13f3c4c5279222b5f09ed1b9e9340ed17185",
        "contractAddress": "0xe5a8a8ef4c5d8f8f35fb8dad0bd5d3d2c1b6e3a3",
        "erc721TokenId": "0x1",
        "category": "erc721",
        "log": {"address": "0xe5a8a8ef4c5d8f8f35fb8dad0bd5d3d2c1b6e3a3", "removed": False},
    }
    first, second = parse_webhook(envelope(nft, nft, event_id="whevt_nft")).transfers
    assert (first.hash, first.hash_key, first.transfer_key, second.transfer_key) == (
        None, "", "event:whevt_nft:0", "event:whevt_nft:1")  # fmt: skip
    assert first.contract == "0xe5a8a8ef4c5d8f8f35fb8dad0bd5d3d2c1b6e3a3"
    assert (first.payload()["hash"], first.token_id) == (None, "0x1")
    again = parse_webhook(envelope(nft, nft, event_id="whevt_nft")).transfers
    assert [t.transfer_key for t in again] == [first.transfer_key, second.transfer_key]
    # NFT activity names the hash inside the log: that is the transaction's hash.
    with_log_hash = {**nft, "log": {**nft["log"], "transactionHash": TX, "logIndex": "0x2"}}
    (keyed,) = parse_webhook(envelope(with_log_hash)).transfers
    assert (keyed.hash, keyed.transfer_key) == (TX, "log:2")


def test_envelope_oddities_quarantine_the_activities_not_the_delivery() -> None:
    no_network = parse_webhook(envelope(EXTERNAL_ACTIVITY, network=None))
    assert [q.reason for q in no_network.quarantined] == ["no_network"]
    not_a_list = parse_webhook(b'{"id": "x", "event": {"network": "ETH_MAINNET", "activity": {"hash": 1}}}')
    assert [(q.position, q.reason, q.raw) for q in not_a_list.quarantined] == [
        (0, "not_a_list", '{"hash": 1}')
    ]
    other_type = parse_webhook(envelope(EXTERNAL_ACTIVITY).replace(b"ADDRESS_ACTIVITY", b"NFT_ACTIVITY"))
    assert (other_type.type, len(other_type.transfers)) == ("NFT_ACTIVITY", 1)
    absent_category = parse_webhook(envelope({k: v for k, v in USDC_ACTIVITY.items() if k != "category"}))
    assert absent_category.transfers[0].category == "unknown"


def test_metric_category_is_bounded() -> None:
    assert [metric_category(c) for c in ("token", "erc721", "external", "brand-new")] == [
        "token",
        "erc721",
        "external",
        "other",
    ]
