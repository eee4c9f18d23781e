"""docs/plugins/breaker.md against the code, beyond what tests/test_docs.py checks."""

from __future__ import annotations

from pathlib import Path

import msgspec

from healkit_breaker import BreakerTransition, TransitionReason

PAGE = Path(__file__).resolve().parents[3] / "docs" / "plugins" / "breaker.md"
TEXT = PAGE.read_text(encoding="utf-8")


def test_the_event_fields_and_reasons_are_documented() -> None:
    events = TEXT[TEXT.index("## Events") :]
    for field in msgspec.structs.fields(BreakerTransition):
        assert f"`{field.name}`" in events, field.name
    for reason in TransitionReason.__args__:
        assert f"`{reason}`" in events, reason
