"""Property tests of the pure edges that see attacker-controlled bytes: the Alchemy parser, the
signature check, the token decoder and the client-frame parser never raise anything but the
errors they document."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainfeed.domain.alchemy import parse_webhook
from chainfeed.domain.frames import parse_client_message, parse_since
from chainfeed.domain.signature import sign, signature_valid
from chainfeed.domain.tokens import decode_token
from chainfeed.errors import AuthError, ValidationError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)

_FIELDS = ["blockNum", "hash", "fromAddress", "toAddress", "value", "asset", "category", "rawContract", "log"]
activities = st.dictionaries(st.sampled_from(_FIELDS), json_values, max_size=len(_FIELDS))
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=30) | json_values,
        "webhookId": st.text(max_size=10),
        "type": st.sampled_from(["ADDRESS_ACTIVITY", "MINED_TRANSACTION"]) | json_values,
        "createdAt": st.text(max_size=30),
        "event": st.fixed_dictionaries(
            {},
            optional={
                "network": st.sampled_from(["ETH_MAINNET", "MATIC_MAINNET"]) | json_values,
                "activity": st.lists(activities | json_values, max_size=4),
                "error": json_values,
            },
        ),
    },
)


@FUZZ
@given(json_values)
def test_parser_on_any_json_raises_only_validation_error(value: Any) -> None:
    with contextlib.suppress(ValidationError):
        parse_webhook(json.dumps(value).encode())


@FUZZ
@given(envelopes)
def test_parser_on_webhook_shaped_json_raises_only_validation_error(value: dict[str, Any]) -> None:
    with contextlib.suppress(ValidationError):
        parse_webhook(json.dumps(value).encode())


@FUZZ
@given(st.binary(max_size=2000))
def test_parser_on_any_bytes_raises_only_validation_error(body: bytes) -> None:
    with contextlib.suppress(ValidationError):
        parse_webhook(body)


@FUZZ
@given(st.binary(max_size=500), st.one_of(st.none(), st.text(max_size=100)), st.lists(st.text(max_size=40)))
def test_signature_check_on_any_input_is_a_boolean(
    body: bytes, signature: str | None, keys: list[str]
) -> None:
    result = signature_valid(body, signature, keys)
    assert result is False or (signature is not None and keys)


@FUZZ
@given(st.binary(max_size=500), st.text(min_size=1, max_size=40))
def test_signature_of_the_exact_body_is_accepted_and_any_change_refused(body: bytes, key: str) -> None:
    signature = sign(body, key)
    assert signature_valid(body, signature, [key])
    assert not signature_valid(body + b"\x00", signature, [key])
    flipped = ("1" if signature[0] == "0" else "0") + signature[1:]
    assert not signature_valid(body, flipped, [key])
    assert signature_valid(body, signature.upper(), [key])  # the same digest, documented


@FUZZ
@given(st.text(max_size=300))
def test_token_decoder_on_any_text_raises_only_auth_error(token: str) -> None:
    with contextlib.suppress(AuthError):
        decode_token(token, secret="s" * 40)


@FUZZ
@given(st.text(max_size=300) | json_values.map(json.dumps))
def test_client_frames_never_raise(text: str) -> None:
    parse_client_message(text)
    parse_since(text)
