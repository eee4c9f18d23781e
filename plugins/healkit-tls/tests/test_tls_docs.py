"""docs/plugins/tls.md against the code, beyond what tests/test_docs.py checks."""

from __future__ import annotations

from pathlib import Path

import msgspec

from healkit_tls import TlsCertificateExpiring, TlsMaterialRejected, TlsRotated, Trigger

PAGE = Path(__file__).resolve().parents[3] / "docs" / "plugins" / "tls.md"
TEXT = PAGE.read_text(encoding="utf-8")


def test_events_and_triggers_are_documented() -> None:
    events = TEXT[TEXT.index("## Events") :]
    for event in (TlsRotated, TlsMaterialRejected, TlsCertificateExpiring):
        assert f"`{event.__name__}`" in events
        for field in msgspec.structs.fields(event):
            assert f"`{field.name}`" in events, (event.__name__, field.name)
    for trigger in Trigger.__args__:
        assert f"`{trigger}`" in events, trigger
