"""Mutated Alchemy deliveries against the real webhook, PostgreSQL behind it (hypothesis).

Starting from the documented payload shapes (ERC-20, external, internal, ERC-721, ERC-1155, the
NFT example without a hash), each example drops, nulls or retypes fields anywhere in them, puts
in unknown categories and odd ERC-1155 metadata lists, and bends the envelope's optional fields.
Every example is signed and sent twice, as Alchemy's retry would be. The properties:

- never a 5xx, never a 400 (the envelope is a delivery: it has an id and an event);
- every activity is either stored (a ``transactions`` row holding exactly that activity) or
  quarantined (a row for its event id and position), never both, never neither;
- the second delivery creates nothing: no feed item, no transfer, no quarantine row.

The app runs in a child process (the app's own use of ``random`` would look to hypothesis like a
strategy's); hypothesis drives it from a thread, as it cannot run async tests itself.
``CHAINFEED_FUZZ_EXAMPLES`` raises the example count (60 by default, for CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainfeed.config import Settings
from chainfeed.domain.alchemy import parse_webhook
from chainfeed.errors import ValidationError
from tests.delivery_support import served_in_subprocess
from tests.ingest_support import activity, address, nft_without_hash, sign

_T = TypeVar("_T")
ME, ALICE = address(0xF022E0), address(0xF022E1)
EXAMPLES = int(os.environ.get("CHAINFEED_FUZZ_EXAMPLES", "60"))
_ids = itertools.count(1)

BASES: list[dict[str, Any]] = [
    activity("token", frm=ALICE, to=ME, log_index=7),
    activity("external", frm=ME, to=ALICE),
    activity("internal", frm=ALICE, to=ME, trace="call_0_1"),
    activity("erc721", frm=ALICE, to=ME, log_index=3, token_id="0x2a"),
    activity("erc1155", frm=ALICE, to=ME, log_index=9, token_id="0x7"),
    nft_without_hash(ME),
]
#: Every field path of the documented shapes (nested ones as tuples).
PATHS = sorted(
    {(key,) for base in BASES for key in base}
    | {
        (key, sub)
        for base in BASES
        for key, value in base.items()
        if isinstance(value, dict)
        for sub in value
    }
    | {("erc1155Metadata", 0, "tokenId"), ("erc1155Metadata", 0, "value")},
    key=str,
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
odd_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
categories = st.sampled_from(
    ["external", "internal", "token", "erc20", "erc721", "erc1155", "specialnft"]
) | st.text(max_size=12)
erc1155_lists = st.lists(
    st.fixed_dictionaries(
        {}, optional={"tokenId": scalars | st.just("0x1"), "value": scalars | st.just("0x1")}
    ),
    max_size=3,
)
mutations = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(PATHS)),
    st.tuples(st.just("null"), st.sampled_from(PATHS)),
    st.tuples(st.just("set"), st.sampled_from(PATHS), odd_values),
    st.tuples(st.just("set"), st.just(("category",)), categories),
    st.tuples(st.just("set"), st.just(("erc1155Metadata",)), erc1155_lists | odd_values),
)
activities = st.tuples(st.sampled_from(range(len(BASES))), st.lists(mutations, max_size=3))
envelope_changes = st.fixed_dictionaries(
    {},
    optional={
        "network": st.sampled_from(["ETH_MAINNET", "MATIC_MAINNET"]) | odd_values,
        "type": st.sampled_from(["ADDRESS_ACTIVITY", "NFT_ACTIVITY"]) | odd_values,
        "webhookId": odd_values,
        "createdAt": odd_values,
    },
)


def _apply(target: dict[str, Any], mutation: tuple[Any, ...]) -> None:
    """Drop, null or set the field at the mutation's path, where its parent exists."""
    kind, path, *value = mutation
    parent: Any = target
    for step in path[:-1]:
        try:
            parent = parent[step]
        except (KeyError, IndexError, TypeError):
            return
    last = path[-1]
    if not isinstance(parent, dict | list) or (isinstance(parent, list) and not 0 <= last < len(parent)):
        return
    if isinstance(parent, dict) and isinstance(last, int):
        return
    if kind == "drop":
        with contextlib.suppress(KeyError, IndexError, TypeError):
            del parent[last]
    else:
        parent[last] = None if kind == "null" else value[0]


def _build(chosen: list[tuple[int, list[tuple[Any, ...]]]], changes: dict[str, Any]) -> dict[str, Any]:
    """A delivery of the chosen activities, each with its own transaction hash, mutated."""
    built = []
    for base_index, activity_mutations in chosen:
        entry = copy.deepcopy(BASES[base_index])
        unique = f"0x{next(_ids):064x}"
        if "hash" in entry:
            entry["hash"] = unique
        if isinstance(entry.get("log"), dict) and "transactionHash" in entry["log"]:
            entry["log"]["transactionHash"] = unique
        for mutation in activity_mutations:
            _apply(entry, mutation)
        built.append(entry)
    event: dict[str, Any] = {"network": "ETH_MAINNET", "activity": built}
    delivery: dict[str, Any] = {
        "webhookId": "wh_fuzz",
        "id": f"whevt_fuzz_{next(_ids)}",
        "type": "ADDRESS_ACTIVITY",
        "createdAt": "2024-01-23T07:42:26.411977228Z",
        "event": event,
    }
    for key, value in changes.items():
        (event if key == "network" else delivery)[key] = value
    return delivery


async def test_mutated_deliveries_are_stored_or_quarantined_once_never_refused(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    async with served_in_subprocess(settings, tmp_path / "app.log") as (_process, base_url):
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            answer = await http.post(
                "/api/auth/register", json={"username": "fuzz", "password": "correct-horse"}
            )
            token = answer.json()["access_token"]
            added = await http.post(
                "/api/addresses", json={"address": ME}, headers={"Authorization": f"Bearer {token}"}
            )
            assert added.status_code == 201, added.text
        await _fuzz(base_url, db)


async def _fuzz(base_url: str, db: asyncpg.Connection) -> None:
    loop = asyncio.get_running_loop()

    def on_loop(coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    async def counts() -> tuple[int, int, int]:
        row = await db.fetchrow(
            "SELECT (SELECT count(*) FROM transactions) AS t, (SELECT count(*) FROM feed_items) AS f,"
            " (SELECT count(*) FROM quarantined_activities) AS q"
        )
        assert row is not None
        return row["t"], row["f"], row["q"]

    async def stored(raw: str) -> bool:
        return bool(
            await db.fetchval("SELECT EXISTS (SELECT 1 FROM transactions WHERE raw = $1::jsonb)", raw)
        )

    async def quarantined(event_id: str) -> set[int]:
        rows = await db.fetch("SELECT position FROM quarantined_activities WHERE event_id = $1", event_id)
        return {r["position"] for r in rows}

    with httpx.Client(base_url=base_url, timeout=10) as http:

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
        @given(chosen=st.lists(activities, min_size=1, max_size=4), changes=envelope_changes)
        def check(chosen: list[tuple[int, list[tuple[Any, ...]]]], changes: dict[str, Any]) -> None:
            delivery = _build(chosen, changes)
            body = json.dumps(delivery).encode()
            headers = {"X-Alchemy-Signature": sign(body), "Content-Type": "application/json"}
            first = http.post("/webhooks/alchemy", content=body, headers=headers)
            assert first.status_code == 200, (first.status_code, first.text, delivery)
            assert first.json()["activities"] == len(delivery["event"]["activity"])
            held = on_loop(quarantined(delivery["id"]))
            for position, entry in enumerate(delivery["event"]["activity"]):
                kept = position not in held and on_loop(stored(json.dumps(entry)))
                assert kept != (position in held), (position, entry, held)
            before = on_loop(counts())
            second = http.post("/webhooks/alchemy", content=body, headers=headers)
            assert second.status_code == 200, second.text
            assert second.json()["new_feed_items"] == 0, (second.json(), delivery)
            assert on_loop(counts()) == before

        await asyncio.to_thread(check)


@settings(max_examples=300, deadline=None)
@given(chosen=st.lists(activities, max_size=5), changes=envelope_changes)
def test_the_parser_never_refuses_a_delivery_and_accounts_for_every_activity(
    chosen: list[tuple[int, list[tuple[Any, ...]]]], changes: dict[str, Any]
) -> None:
    delivery = _build(chosen, changes)
    try:
        webhook = parse_webhook(json.dumps(delivery).encode())
    except ValidationError as exc:  # pragma: no cover - the property failing
        raise AssertionError(f"a delivery was refused: {exc}") from None
    # Every activity has its own transaction (or none): none collapses into another.
    positions = sorted([t.position for t in webhook.transfers] + [q.position for q in webhook.quarantined])
    assert positions == list(range(len(chosen)))
