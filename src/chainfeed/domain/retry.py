"""Retry policies as pure decisions: the stream consumer's dead-letter rule and the one back-off.

Redis counts deliveries per entry (XREADGROUP counts the first, every claim one more). An
attempt that fails leaves the entry pending; once it has idled past the claim time a consumer
claims and retries it. The attempt that fails at the ``max_deliveries``-th delivery moves the
entry to the dead-letter stream instead, with the error it just saw. An entry claimed with its
attempts already used up (its consumers died mid-attempt) goes there without another try.
Nothing is dropped silently.

:class:`Backoff` is the one back-off every retrying part uses: the supervised workers between
failed steps (``chainfeed.workers``) and the Alchemy sync between failed calls.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "MAX_ERROR_LENGTH",
    "OUTAGE_BACKOFF",
    "Backoff",
    "Verdict",
    "after_failure",
    "dead_letter_fields",
    "exhausted",
]

#: Dead letters keep the error short: a reason, not a traceback.
MAX_ERROR_LENGTH = 500


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off: ``first`` seconds after the first failure, doubling up to ``cap``.

    ``jitter`` spreads the delays (+-20 % by default), so instances that failed together do not
    come back together and hit a recovering server at the same instant.
    """

    first: float
    cap: float
    jitter: float = 0.2

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1 for the first)."""
        delay = min(self.cap, self.first * 2.0 ** max(0, failures - 1))
        return delay * (1 + random.uniform(-self.jitter, self.jitter))  # noqa: S311 - jitter, not security


#: How a worker waits out an outage of Redis or PostgreSQL: back within a second of recovery.
OUTAGE_BACKOFF = Backoff(first=0.1, cap=1.0)


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
