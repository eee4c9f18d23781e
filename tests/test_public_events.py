"""The public modules for plugin authors: the typed events and the plugin namespace."""

from __future__ import annotations

import inspect
from typing import get_type_hints

import msgspec
import pytest

import healkit
import healkit.events
import healkit.plugin
from healkit.testing import Fault, FaultServer, ManualClock


def _sorted(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: (not n.isupper(), n))


def test_the_event_module_exports_exactly_its_public_names() -> None:
    events = healkit.events
    assert events.__all__ == _sorted(events.__all__)
    public = {
        name
        for name, value in vars(events).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public - {"final", "Literal"} == set(events.__all__)


EVENTS = [
    getattr(healkit.events, name)
    for name in healkit.events.__all__
    if inspect.isclass(getattr(healkit.events, name))
]


@pytest.mark.parametrize("event", EVENTS, ids=[e.__name__ for e in EVENTS])
def test_every_event_is_frozen_typed_and_documented(event: type[msgspec.Struct]) -> None:
    assert issubclass(event, msgspec.Struct)
    assert event.__struct_config__.frozen
    hints = get_type_hints(event)
    assert set(hints) == set(event.__struct_fields__)
    doc = inspect.getdoc(event) or ""
    for field in event.__struct_fields__:
        assert f"{field}:" in doc, f"{event.__name__}.{field} is not documented"


def test_an_event_cannot_be_changed() -> None:
    event = healkit.events.EndpointEjected(
        service="s", endpoint="http://a", failures=3, seconds=30.0, ejections=1
    )
    with pytest.raises(AttributeError):
        event.failures = 4  # type: ignore[misc]


def test_the_plugin_namespace_is_sorted_documented_and_the_same_objects() -> None:
    plugin = healkit.plugin
    assert plugin.__all__ == _sorted(plugin.__all__)
    for name in plugin.__all__:
        value = getattr(plugin, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__doc__, name
        if name in healkit.__all__:  # kept at the top level for compatibility
            assert getattr(healkit, name) is value, name


@pytest.mark.anyio
async def test_endpoint_status_is_a_typed_read_of_the_routing_plugin(
    manual_clock: ManualClock,
) -> None:
    async with FaultServer() as up, FaultServer() as down:
        down.set_default(Fault.status(500))
        config = {
            "services": {"svc": {"endpoints": [up.url, down.url], "routing": {"eject_after": 1}}}
        }
        async with healkit.Client(config=config, entry_points=False, clock=manual_clock) as c:
            for _ in range(2):
                await c.get("/x", service="svc")
            seen = healkit.endpoint_status(c.runtime, "svc")
            assert healkit.endpoint_status(c.runtime, "unknown") == ()
        plain = {"services": {"svc": {"endpoints": [up.url, down.url]}}}
        blocked = healkit.Runtime(config=plain, entry_points=False, block_plugins=["routing"])
        assert healkit.endpoint_status(blocked, "svc") == ()
    assert all(isinstance(s, healkit.EndpointStatus) for s in seen)
    assert [(s.endpoint, s.usable) for s in seen] == [(up.url, True), (down.url, False)]
    assert seen[1].ejected_for > 0
