"""Pure rules: addresses, passwords and tokens, without any server."""

from __future__ import annotations

import time

import jwt
import pytest

from chainfeed.domain.addresses import normalize_address, normalize_label
from chainfeed.domain.passwords import (
    DEFAULT_WORK,
    hash_password,
    needs_rehash,
    validate_credentials,
    verify_password,
)
from chainfeed.domain.tokens import decode_token, issue_token
from chainfeed.errors import AuthError, TokenExpired, ValidationError

SECRET = "k" * 40
ADDRESS = "0xD8dA6BF26964aF9D7eEd9e03E53415D37aA96045"


def test_address_is_lower_cased() -> None:
    assert normalize_address(f" {ADDRESS} ") == ADDRESS.lower()


@pytest.mark.parametrize("bad", ["", "0x123", ADDRESS[2:], "0x" + "g" * 40, ADDRESS + "0", 42, None])
def test_bad_address_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError):
        normalize_address(bad)


def test_label_is_trimmed_and_bounded() -> None:
    assert normalize_label("  cold wallet ") == "cold wallet"
    assert normalize_label("   ") is None
    with pytest.raises(ValidationError):
        normalize_label("x" * 101)


def test_password_round_trip_and_salt() -> None:
    first, second = hash_password("hunter2hunter2"), hash_password("hunter2hunter2")
    assert first != second
    assert verify_password("hunter2hunter2", first)
    assert not verify_password("hunter2hunter3", first)
    assert not verify_password("x", "garbage")


@pytest.mark.parametrize(
    ("username", "password"), [("ab", "longenough"), ("bob!", "longenough"), ("bob", "short")]
)
def test_bad_credentials_shape(username: str, password: str) -> None:
    with pytest.raises(ValidationError):
        validate_credentials(username, password)


def test_token_round_trip() -> None:
    claims = decode_token(issue_token(7, secret=SECRET, ttl_seconds=60), secret=SECRET)
    assert claims.user_id == 7
    assert claims.expires_at > time.time()


def test_expired_token() -> None:
    token = issue_token(7, secret=SECRET, ttl_seconds=10, now=time.time() - 100)
    with pytest.raises(TokenExpired):
        decode_token(token, secret=SECRET)


@pytest.mark.parametrize(
    "token",
    [
        issue_token(
            7, secret="w" * 40, ttl_seconds=86400
        ),  # wrong key (valid for a day: built at collection)
        jwt.encode(
            {"sub": "7", "iat": int(time.time()), "exp": int(time.time()) + 86400}, None, algorithm="none"
        ),
        jwt.encode({"iat": int(time.time()), "exp": int(time.time()) + 86400}, SECRET, algorithm="HS256"),
        jwt.encode(
            {"sub": "x7", "iat": int(time.time()), "exp": int(time.time()) + 86400}, SECRET, algorithm="HS256"
        ),
        jwt.encode({"sub": "7", "iat": int(time.time())}, SECRET, algorithm="HS256"),
        "not.a.token",
        "e" * 5000,
    ],
)
def test_forged_tokens_are_refused(token: str) -> None:
    with pytest.raises(AuthError) as info:
        decode_token(token, secret=SECRET)
    assert info.value.reason == "invalid token"


def test_missing_token() -> None:
    with pytest.raises(AuthError) as info:
        decode_token("", secret=SECRET)
    assert info.value.reason == "missing token"


def test_password_hashes_use_owasps_work_and_tell_when_to_rehash() -> None:
    assert DEFAULT_WORK == 17
    cheap = hash_password("hunter2hunter2", work=12)
    assert verify_password("hunter2hunter2", cheap)
    assert needs_rehash(cheap, work=13)
    assert not needs_rehash(cheap, work=12)
    assert needs_rehash("garbage")
    bomb = "scrypt$" + str(2**30) + "$8$1$AAAA$AAAA"  # a stored value must not allocate 128 GiB
    assert not verify_password("x", bomb)
