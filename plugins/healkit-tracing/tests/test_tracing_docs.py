"""docs/plugins/tracing.md against the code, beyond what tests/test_docs.py checks."""

from __future__ import annotations

from pathlib import Path

from healkit_tracing import _names

PAGE = Path(__file__).resolve().parents[3] / "docs" / "plugins" / "tracing.md"
TEXT = PAGE.read_text(encoding="utf-8")


def test_every_attribute_and_instrument_is_documented() -> None:
    for name, value in vars(_names).items():
        if name.isupper() and isinstance(value, str) and "." in value:
            if name.startswith("BREAKER_") and name != "BREAKER_STATE":
                continue  # documented with their instrument
            assert f"`{value}`" in TEXT, f"{name} = {value!r} is not in {PAGE.name}"
