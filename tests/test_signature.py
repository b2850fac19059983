"""The webhook signature: hex HMAC-SHA256 of the raw body, any configured key, nothing else."""

from __future__ import annotations

import hashlib
import hmac

from chainfeed.domain.signature import sign, signature_valid

BODY = b'{"webhookId":"wh_k63lg72rxda78gce","id":"whevt_vq499kv7elmlbp2v","event":{}}'


def _hmac(key: str, body: bytes = BODY) -> str:
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def test_sign_is_lower_case_hex_hmac_sha256() -> None:
    assert sign(BODY, "whsec_a") == _hmac("whsec_a")
    assert sign(BODY, "whsec_a") == sign(BODY, "whsec_a").lower()


def test_valid_under_the_only_key() -> None:
    assert signature_valid(BODY, _hmac("whsec_a"), ["whsec_a"])


def test_valid_under_any_key_during_rotation() -> None:
    """Old and new keys are both configured while Alchemy switches: either signature passes."""
    keys = ("whsec_old", "whsec_new")
    assert signature_valid(BODY, _hmac("whsec_old"), keys)
    assert signature_valid(BODY, _hmac("whsec_new"), keys)


def test_upper_case_hex_names_the_same_digest() -> None:
    assert signature_valid(BODY, _hmac("whsec_a").upper(), ["whsec_a"])


def test_wrong_key_is_refused() -> None:
    assert not signature_valid(BODY, _hmac("whsec_other"), ["whsec_a"])


def test_any_change_to_the_body_is_refused() -> None:
    """The signature covers the exact bytes: re-serialised JSON (one extra space) no longer matches."""
    signature = _hmac("whsec_a")
    assert not signature_valid(BODY.replace(b":", b": ", 1), signature, ["whsec_a"])


def test_missing_empty_or_malformed_signature_is_refused() -> None:
    for signature in (None, "", "zz" * 32, _hmac("whsec_a")[:-2], _hmac("whsec_a") + "00", " " * 64):
        assert not signature_valid(BODY, signature, ["whsec_a"]), signature


def test_no_keys_configured_refuses_everything() -> None:
    assert not signature_valid(BODY, _hmac("whsec_a"), [])
