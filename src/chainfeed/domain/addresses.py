"""Blockchain address rules: ``0x`` + 40 hex digits, stored lower-case."""

from __future__ import annotations

import re

from chainfeed.errors import ValidationError

__all__ = ["normalize_address", "normalize_label"]

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
#: Control characters (NUL included, which PostgreSQL's text refuses) have no place in a label.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_LABEL_LENGTH = 100


def normalize_address(raw: object) -> str:
    """The address in its stored (lower-case) form, or ValidationError if it is not ``0x`` + 40 hex."""
    if not isinstance(raw, str) or not _ADDRESS.fullmatch(raw.strip()):
        raise ValidationError("address must be 0x followed by 40 hexadecimal digits")
    return raw.strip().lower()


def normalize_label(raw: object) -> str | None:
    """A trimmed label (None when absent or blank); labels are short free text."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ValidationError("label must be a string")
    label = raw.strip()
    if _CONTROL.search(label):
        raise ValidationError("label must not contain control characters")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValidationError(f"label must be at most {MAX_LABEL_LENGTH} characters")
    return label or None
