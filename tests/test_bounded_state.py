"""BoundedMap: least recently used first out, idle expiry, spared entries, O(1) work.

And the ``state`` section that bounds it, and which keys a configuration names.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from types import FrameType

import pytest

import healkit
from healkit import BoundedMap, EvictionReason
from healkit._bounded import MAX_SPARED
from healkit.testing import ManualClock
from healkit_breaker import BreakerPlugin
from healkit_retry import RetryPlugin


class Evictions:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, EvictionReason]] = []

    def __call__(self, key: str, value: int, reason: EvictionReason) -> None:
        self.seen.append((key, value, reason))


def test_the_cap_evicts_the_least_recently_used_and_counts_it() -> None:
    evictions = Evictions()
    bounded = BoundedMap[str, int](capacity=3, idle_expiry=100.0, evicted=evictions)
    for index, key in enumerate("abc"):
        bounded.put(key, index, now=float(index))
    assert bounded.get("a", now=3.0) == 0  # a is now the most recently used
    bounded.put("d", 3, now=4.0)
    assert list(bounded) == ["c", "a", "d"]
    assert evictions.seen == [("b", 1, "cap")]
    assert bounded.evictions == 1


def test_an_idle_entry_expires_on_the_next_put_or_get() -> None:
    evictions = Evictions()
    bounded = BoundedMap[str, int](capacity=10, idle_expiry=60.0, evicted=evictions)
    bounded.put("old", 1, now=0.0)
    bounded.put("used", 2, now=0.0)
    assert bounded.get("used", now=50.0) == 2
    assert bounded.get("old", now=60.0) is None  # unused for exactly idle_expiry
    bounded.put("new", 3, now=100.0)
    assert list(bounded) == ["used", "new"]
    bounded.put("newer", 4, now=110.0)  # "used" was last used at 50
    assert list(bounded) == ["new", "newer"]
    assert [(key, reason) for key, _, reason in evictions.seen] == [
        ("old", "idle"),
        ("used", "idle"),
    ]


def test_spared_entries_outlive_idle_expiry_and_lose_only_to_the_cap() -> None:
    bounded = BoundedMap[str, int](
        capacity=4, idle_expiry=10.0, spare=lambda value, _now: value == 0
    )
    bounded.put("open", 0, now=0.0)
    for index in range(1, 100):
        bounded.put(f"k{index}", index, now=float(index))
    assert "open" in bounded  # spared every time it was next in line
    crowd = BoundedMap[str, int](capacity=4, idle_expiry=10.0, spare=lambda _value, _now: True)
    for index in range(6):
        crowd.put(f"k{index}", index, now=0.0)
    assert len(crowd) == 4  # the cap holds even when every entry asks to be spared
    assert crowd.evictions == 2


def test_a_put_looks_at_a_bounded_number_of_entries_however_many_there_are() -> None:
    looked: list[int] = []

    def spare(value: int, now: float) -> bool:
        del now
        looked.append(value)
        return value % 2 == 0  # half the entries ask to be spared

    bounded = BoundedMap[int, int](capacity=10_000, idle_expiry=1_000.0, spare=spare)
    for key in range(10_000):
        bounded.put(key, key, now=0.0)
    assert looked == []  # below the cap and nothing idle: nothing looked at
    for key in range(10_000, 12_000):
        looked.clear()
        bounded.put(key, key, now=1.0)
        assert len(looked) <= MAX_SPARED
    assert len(bounded) == 10_000


def test_resize_evicts_what_no_longer_fits() -> None:
    evictions = Evictions()
    bounded = BoundedMap[str, int](capacity=5, idle_expiry=100.0, evicted=evictions)
    for index, key in enumerate("abcde"):
        bounded.put(key, index, now=float(index))
    bounded.resize(2, 100.0, now=5.0)
    assert list(bounded) == ["d", "e"]
    bounded.resize(2, 1.0, now=5.0)  # e was last used at 4: idle for exactly 1 s
    assert list(bounded) == []
    assert [reason for _, _, reason in evictions.seen] == ["cap", "cap", "cap", "idle", "idle"]
    with pytest.raises(ValueError, match="capacity"):
        bounded.resize(0, 1.0, now=5.0)


def test_pop_is_not_an_eviction() -> None:
    bounded = BoundedMap[str, int](capacity=2, idle_expiry=1.0)
    bounded.put("a", 1, now=0.0)
    assert bounded.pop("a") == 1
    assert bounded.pop("a") is None
    assert bounded.evictions == 0


def test_the_state_section_is_validated_and_defaults_are_safe() -> None:
    config = healkit.build_config({})
    assert config.state == healkit.StateSettings(max_unconfigured=4096, idle_expiry=600.0)
    config = healkit.build_config({"state": {"max_unconfigured": 10, "idle_expiry": 30}})
    assert (config.state.max_unconfigured, config.state.idle_expiry) == (10, 30.0)
    with pytest.raises(healkit.ConfigError) as raised:
        healkit.build_config({"state": {"max_unconfigured": 0, "idle_forever": True}})
    assert str(raised.value).splitlines()[1:] == [
        "  $.state.max_unconfigured: must be >= 1",
        "  $.state: unknown key 'idle_forever' (known keys: idle_expiry, max_unconfigured)",
    ]


def test_configured_keys_are_a_documented_services_own_endpoints_and_fallbacks() -> None:
    runtime = healkit.Runtime(entry_points=False)
    config = healkit.build_config(
        {
            "services": {
                "pay": {
                    "endpoints": ["http://pay.test:1/"],
                    "routing": {"fallback_groups": [["http://dr.test:2"]]},
                }
            }
        },
        runtime.sections,
    )
    assert config.configured("pay")
    assert config.configured("pay", "http://pay.test:1")
    assert config.configured("pay", "http://dr.test:2")
    assert not config.configured("pay", "http://hook.test:3")
    assert not config.configured("hook.test")
    assert not config.configured("hook.test", "http://hook.test:3")


# --- the first call to a new service or host does the same work with 10 or 5,000 known ---


def python_calls(action: Callable[[], object]) -> int:
    """Count the Python function calls ``action`` makes (the work done, not its time)."""
    calls = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        del frame, arg
        calls += event == "call"

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return calls


def first_call_work(plugin: object, known: int) -> int:
    """The Python calls of the first attempt of a new service when ``known`` fill the cap."""
    clock = ManualClock()
    runtime = healkit.Runtime(
        config={"state": {"max_unconfigured": known}},
        plugins=[plugin],
        entry_points=False,
        clock=clock,
    )
    config = runtime.config

    def first_attempt(name: str) -> None:
        call = healkit.CallContext(
            service=name,
            transport="http",
            method="GET",
            target="/",
            config=config,
            policy=config.defaults,
            clock=clock,
            scope_deadline=math.inf,
        )
        attempt = healkit.AttemptContext(1, f"http://{name}:80", started=clock.now())
        runtime._plan.pre_request(call, attempt)

    for index in range(known + 1):  # one over the cap: every new one evicts one now
        first_attempt(f"host-{index}.test")
    return python_calls(lambda: first_attempt("new.test"))


@pytest.mark.parametrize("plugin", [RetryPlugin, BreakerPlugin])
def test_the_first_call_to_a_new_host_does_not_scan_the_known_ones(
    plugin: Callable[[], object],
) -> None:
    assert first_call_work(plugin(), 10) == first_call_work(plugin(), 5_000)
