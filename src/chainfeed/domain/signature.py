"""Alchemy webhook signatures: the hex HMAC-SHA256 of the raw body under a signing key.

Checked over the exact bytes received, before any parsing, against every configured key (several
keys let an operator rotate without a window where valid deliveries are refused). Comparison is
constant-time, so response timing reveals nothing about how much of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["sign", "signature_valid"]

#: Hex digest length of SHA-256; anything else cannot be a valid signature.
_HEX_LENGTH = 64


def sign(body: bytes, key: str) -> str:
    """The lower-case hex HMAC-SHA256 of ``body`` under ``key`` (what Alchemy sends)."""
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(body: bytes, signature: str | None, keys: Iterable[str]) -> bool:
    """True when ``signature`` is the HMAC of ``body`` under any of ``keys``.

    Every key is tried (no early exit on the first mismatch), and a signature of the wrong shape
    is refused before any HMAC is computed. Upper-case hex is accepted: it names the same digest.
    """
    if not signature or len(signature) != _HEX_LENGTH:
        return False
    try:
        presented = bytes.fromhex(signature)
    except ValueError:
        return False
    valid = False
    for key in keys:
        expected = hmac.new(key.encode(), body, hashlib.sha256).digest()
        valid |= hmac.compare_digest(expected, presented)
    return valid
