"""Pure rules of the watch-list sync with Alchemy: batching, back-off, and what an answer means.

Alchemy's ``PATCH /api/update-webhook-addresses`` takes at most 500 addresses per list; an answer
of 429, 5xx or a network error is retried with exponential back-off; 401/403 means our token is
wrong and retrying will not help until an operator fixes it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

from chainfeed.domain.retry import Backoff

__all__ = ["MAX_ADDRESSES_PER_CALL", "SYNC_BACKOFF", "Outcome", "Patch", "classify", "patches"]

MAX_ADDRESSES_PER_CALL = 500


class Outcome(Enum):
    """What one call to Alchemy came to; the value is the metric label."""

    OK = "ok"
    RETRY = "retry"  # 429, 5xx, timeout, connection refused: try again later
    UNAUTHORIZED = "unauthorized"  # 401/403: stop until the token is fixed
    REJECTED = "rejected"  # another 4xx: our request is wrong; back off long, keep the rows


@dataclass(frozen=True, slots=True)
class Patch:
    """One PATCH body's worth of changes."""

    add: tuple[str, ...]
    remove: tuple[str, ...]


def patches(
    add: Sequence[str], remove: Sequence[str], *, limit: int = MAX_ADDRESSES_PER_CALL
) -> Iterator[Patch]:
    """Split changes into calls of at most ``limit`` additions and ``limit`` removals each."""
    for start in range(0, max(len(add), len(remove)), limit):
        yield Patch(tuple(add[start : start + limit]), tuple(remove[start : start + limit]))


def classify(status: int | None) -> Outcome:
    """The outcome of an HTTP status (``None``: the request never got an answer)."""
    if status is None or status == 429 or status >= 500:
        return Outcome.RETRY
    if status in (401, 403):
        return Outcome.UNAUTHORIZED
    if 200 <= status < 300:
        return Outcome.OK
    return Outcome.REJECTED


#: Between failed calls: from 1 s, doubling, at most 5 minutes (the one back-off, other numbers).
SYNC_BACKOFF = Backoff(first=1.0, cap=300.0)
