"""The retry and dead-letter policy of the stream consumer, as pure decisions.

Redis counts deliveries per entry (XREADGROUP counts the first, every claim one more). An
attempt that fails leaves the entry pending; once it has idled past the claim time a consumer
claims and retries it. The attempt that fails at the ``max_deliveries``-th delivery moves the
entry to the dead-letter stream instead, with the error it just saw. An entry claimed with its
attempts already used up (its consumers died mid-attempt) goes there without another try.
Nothing is dropped silently.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = ["MAX_ERROR_LENGTH", "Verdict", "after_failure", "dead_letter_fields", "exhausted"]

#: Dead letters keep the error short: a reason, not a traceback.
MAX_ERROR_LENGTH = 500


class Verdict(enum.Enum):
    """What to do with an entry whose attempt failed."""

    RETRY = "retry"  # leave it pending; it is claimed again after the claim idle time
    DEAD_LETTER = "dead_letter"  # copy it to the dead-letter stream and acknowledge it


def after_failure(deliveries: int, max_deliveries: int) -> Verdict:
    """The verdict for an attempt that failed at its ``deliveries``-th delivery."""
    return Verdict.DEAD_LETTER if deliveries >= max_deliveries else Verdict.RETRY


def exhausted(deliveries: int, max_deliveries: int) -> bool:
    """True when an entry was claimed with every allowed attempt already spent."""
    return deliveries > max_deliveries


def dead_letter_fields(
    fields: Mapping[str, str], *, original_id: str, deliveries: int, error: str
) -> dict[str, str]:
    """The dead-letter entry: the original fields plus ``original_id``, ``deliveries``, ``error``."""
    return {
        **fields,
        "original_id": original_id,
        "deliveries": str(deliveries),
        "error": error[:MAX_ERROR_LENGTH],
    }
