"""The retry / dead-letter policy, decided without Redis."""

from __future__ import annotations

import pytest

from chainfeed.domain.retry import MAX_ERROR_LENGTH, Verdict, after_failure, dead_letter_fields, exhausted


@pytest.mark.parametrize(
    ("deliveries", "verdict"),
    [(1, Verdict.RETRY), (2, Verdict.RETRY), (3, Verdict.DEAD_LETTER), (4, Verdict.DEAD_LETTER)],
)
def test_a_failure_is_retried_until_the_last_allowed_delivery(deliveries: int, verdict: Verdict) -> None:
    """With 3 deliveries allowed, the 1st and 2nd failures are retried and the 3rd dead-letters."""
    assert after_failure(deliveries, max_deliveries=3) is verdict


def test_a_single_allowed_delivery_dead_letters_the_first_failure() -> None:
    assert after_failure(1, max_deliveries=1) is Verdict.DEAD_LETTER


def test_an_entry_claimed_after_its_last_delivery_is_exhausted() -> None:
    """Claims count as deliveries: the 4th delivery of a 3-delivery policy is never attempted."""
    assert not exhausted(3, max_deliveries=3)
    assert exhausted(4, max_deliveries=3)


def test_dead_letter_keeps_the_original_fields_and_says_why() -> None:
    original = {"user_id": "1", "type": "test", "payload": "{oops", "traceparent": "00-abc"}
    letter = dead_letter_fields(original, original_id="1-0", deliveries=3, error="payload is not valid JSON")
    assert letter == {
        **original,
        "original_id": "1-0",
        "deliveries": "3",
        "error": "payload is not valid JSON",
    }
    assert original == {"user_id": "1", "type": "test", "payload": "{oops", "traceparent": "00-abc"}


def test_dead_letter_error_is_bounded() -> None:
    letter = dead_letter_fields({}, original_id="1-0", deliveries=3, error="x" * 10_000)
    assert len(letter["error"]) == MAX_ERROR_LENGTH
