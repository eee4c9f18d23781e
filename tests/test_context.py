"""The call and attempt contexts: healkit's positional constructors make what ``__init__`` makes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from multidict import CIMultiDict

import healkit
from healkit._config.models import CORE_TIMEOUTS


def slots(context: healkit.CallContext | healkit.AttemptContext) -> dict[str, object]:
    return {name: getattr(context, name) for name in type(context).__slots__}


@pytest.mark.parametrize("given", ["all", "defaults"])
def test_a_call_context_started_by_position_is_the_one_init_makes(given: str) -> None:
    config = healkit.Runtime(entry_points=False).config
    facts: dict[str, Any] = {
        "service": "svc",
        "transport": "http",
        "method": "POST",
        "target": "/x",
        "config": config,
        "policy": config.defaults,
        "clock": healkit.MonotonicClock(),
        "headers": CIMultiDict({"A": "b"}),
        "idempotent": True,
        "replayable": False,
        "started": 12.5,
        "deadline": 42.0,
        "routable": True,
    }
    if given == "defaults":  # what __init__ defaults to, spelled out for _start
        made = healkit.CallContext(**{k: facts[k] for k in list(facts)[:7]}, started=12.5)
        facts.update(headers=None, idempotent=False, replayable=True, deadline=math.inf)
        facts["routable"] = False
    else:
        made = healkit.CallContext(**facts)
    started = healkit.CallContext._start(*facts.values())
    assert slots(started) == slots(made)
    assert started.attempts is not made.attempts


def test_an_attempt_context_started_by_position_is_the_one_init_makes() -> None:
    limits = healkit.Timeouts(connect=1.0, read=2.0, total=3.0)
    made = healkit.AttemptContext(2, "http://a", started=3.0, timeouts=limits, retry_delay=0.25)
    started = healkit.AttemptContext._start(2, "http://a", 3.0, limits, 0.25)
    assert slots(started) == slots(made)
    assert started.timeouts is limits
    assert healkit.AttemptContext(1, None, started=0.0).timeouts is CORE_TIMEOUTS
    assert started.headers is not made.headers
