"""Reading stream entries and encoding frames: pure functions, no servers."""

from __future__ import annotations

import json

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from chainfeed.domain.entries import entry_millis, parse_entry
from chainfeed.domain.frames import (
    EVICT_PREFIX,
    Evict,
    Ping,
    Push,
    Resume,
    encode_frame,
    pack_push,
    parse_client_message,
    parse_since,
    text_frame,
    unpack,
)
from chainfeed.errors import PoisonEntry


def test_a_relay_entry_names_its_committed_feed_item() -> None:
    fields = {
        "user_id": "7",
        "type": "new_transaction",
        "payload": '{"hash": "0xabc"}',
        "feed_item_id": "42",
        "created_at": "2024-05-01T12:00:00+00:00",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    item = parse_entry("1714564800000-0", fields)
    assert (item.user_id, item.feed_item_id, item.type, item.persisted) == (7, 42, "new_transaction", True)
    assert item.created_at == "2024-05-01T12:00:00+00:00"


def test_a_hand_entry_has_no_feed_item_yet() -> None:
    """``XADD feed:stream '*' user_id 1 type test payload '{"test":"data"}'`` of the SPEC."""
    item = parse_entry("1-0", {"user_id": "1", "type": "test", "payload": '{"test":"data"}'})
    assert (item.user_id, item.type, item.feed_item_id, item.persisted) == (1, "test", None, False)
    assert item.payload_json == '{"test":"data"}'


def test_type_defaults_to_new_transaction() -> None:
    assert parse_entry("1-0", {"user_id": "1", "payload": "{}"}).type == "new_transaction"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"type": "test", "payload": "{}"}, "user_id is missing"),
        ({"user_id": "abc", "payload": "{}"}, "user_id is not a positive integer"),
        ({"user_id": "-1", "payload": "{}"}, "user_id is not a positive integer"),
        ({"user_id": "0", "payload": "{}"}, "user_id is not a positive integer"),
        ({"user_id": "²", "payload": "{}"}, "user_id is not a positive integer"),
        ({"user_id": "9" * 30, "payload": "{}"}, "user_id is not a positive integer"),
        ({"user_id": "1", "payload": "{}", "feed_item_id": "x"}, "feed_item_id is not a positive integer"),
        ({"user_id": "1"}, "payload is missing"),
        ({"user_id": "1", "payload": "{not json"}, "payload is not valid JSON"),
        ({"user_id": "1", "payload": '{"a": "\\u0000"}'}, "payload contains a NUL character"),
        ({"user_id": "1", "payload": "{}", "type": "t" * 65}, "type is longer than 64 characters"),
    ],
)
def test_a_malformed_entry_is_poison_with_a_reason(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(PoisonEntry) as caught:
        parse_entry("1-0", fields)
    assert caught.value.reason.startswith(reason)


def test_entry_time_comes_from_its_id() -> None:
    assert entry_millis("1714564800123-7") == 1714564800123


def test_frame_has_the_spec_shape_and_embeds_the_payload_as_written() -> None:
    text = encode_frame(
        item_id=5,
        seq=2,
        user_id=1,
        created_at="2024-05-01T12:00:00+00:00",
        type_="new_transaction",
        payload_json='{"v": 1.50}',
    )
    assert json.loads(text) == {
        "type": "new_transaction",
        "id": 5,
        "seq": 2,
        "user_id": 1,
        "created_at": "2024-05-01T12:00:00+00:00",
        "payload": {"v": 1.5},
    }
    assert '"payload":{"v": 1.50}' in text


def test_envelopes_round_trip() -> None:
    frame = '{"type":"test","id":3}'
    assert unpack(pack_push(3, 2, 1714564800000, frame)) == Push(3, 2, 1714564800000, frame)
    traced = pack_push(3, 2, 1714564800000, frame, "00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert unpack(traced) == Push(3, 2, 1714564800000, frame, "00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert unpack(EVICT_PREFIX + "host-1-ab|7") == Evict("host-1-ab|7")
    assert unpack("!future-control x") is None
    assert unpack("garbage") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type":"ping"}', Ping()),
        ('{"type":"resume","since":12}', Resume(12)),
        ('{"type":"resume","since":"12"}', Resume(12)),
        ('{"type":"resume","since":-1}', None),
        ('{"type":"resume"}', None),
        ('{"type":"hello"}', None),
        ("[1, 2]", None),
        ("not json", None),
    ],
)
def test_client_messages(text: str, message: object) -> None:
    assert parse_client_message(text) == message


@pytest.mark.parametrize(
    ("raw", "since"),
    [("0", 0), ("15", 15), (15, 15), ("", None), ("-3", None), ("1e3", None), (True, None), (2**63, None)],
)
def test_since_is_a_feed_item_id(raw: object, since: int | None) -> None:
    assert parse_since(raw) == since


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_a_prebuilt_text_frame_is_what_a_websocket_client_parses(size: int) -> None:
    """The hub writes these bytes to every tab itself: a real parser must read one whole frame."""
    text = "é" * (size // 2) + "x" * (size % 2)
    reader = StreamReader()
    reader.feed_data(text_frame(text))
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    else:  # pragma: no cover - the parser wanted more bytes than the frame has
        pytest.fail("incomplete frame")
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert not frame.rsv1
    assert frame.data.decode() == text
    assert not reader.buffer
    # The same bytes as websockets' own serializer, which it stands in for on the hot path.
    assert text_frame(text) == Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
