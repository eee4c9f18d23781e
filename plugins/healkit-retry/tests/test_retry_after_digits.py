"""Retry-After's delay-seconds are ASCII digits (RFC 9110 5.6.1: DIGIT is 0-9)."""

from __future__ import annotations

import pytest

from healkit_retry import parse_retry_after


@pytest.mark.parametrize("value", ["\u0663", "\uff13", "\u0967\u0966", "3.\u0665", "\U0001d7d7"])
def test_digits_of_other_scripts_are_not_a_delay(value: str) -> None:
    # Old code: the pattern's \d matched them, and float() read ARABIC-INDIC
    # DIGIT THREE as 3.0.
    assert parse_retry_after(value, wall_now=0.0) is None


def test_ascii_digits_are_a_delay() -> None:
    assert parse_retry_after(" 3.5 ", wall_now=0.0) == 3.5
