"""A refusal returned from ``healkit_pre_request``: the cheap way to refuse an attempt.

An open breaker refuses every call of an outage, so how a refusal travels
matters: returned, it unwinds nothing. These tests hold the contract: a
returned refusal is a refusal like a raised one (nothing sent, seen by
``healkit_on_error``, the fallbacks and ``healkit_call_end``, the
implementations after it skipped), an observer cannot refuse either way, and
other return values are still ignored.
"""

from __future__ import annotations

from typing import Any

import pytest

import healkit
from healkit.testing import FaultServer
from tests.plugins import Recorder, StaticFallback

pytestmark = pytest.mark.anyio


class Refuse:
    """Refuses every attempt by returning a ``CircuitOpenError``."""

    healkit_name = "refuse"

    def __init__(self) -> None:
        self.refused = 0

    @healkit.hookimpl(tryfirst=True)
    def healkit_pre_request(self, call: healkit.CallContext) -> healkit.HealkitError:
        self.refused += 1
        return healkit.CircuitOpenError(call.service, None, retry_at=0.0)


class Later:
    """A pre_request implementation called after ``Refuse`` (registered before it)."""

    healkit_name = "later"

    def __init__(self) -> None:
        self.seen = 0

    @healkit.hookimpl
    def healkit_pre_request(self) -> None:
        self.seen += 1


class Counted:
    """An async function that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return "ok"


def runtime(*plugins: object, config: Any = None) -> healkit.Runtime:
    return healkit.Runtime(config=config, plugins=plugins, entry_points=False)


async def test_a_returned_refusal_sends_nothing_and_reaches_on_error_and_call_end() -> None:
    later, refuse, recorder = Later(), Refuse(), Recorder()
    rt = runtime(later, refuse, recorder)
    function = Counted()
    with pytest.raises(healkit.CircuitOpenError) as caught:
        await healkit.resilient(service="svc", runtime=rt)(function.__call__)()
    assert function.calls == 0
    assert refuse.refused == 1
    assert later.seen == 0  # the implementations after a refusal do not run
    assert ("on_error", "CircuitOpenError") in recorder.events
    assert recorder.names()[-1] == "call_end"
    (attempt,) = caught.value.attempts
    assert attempt.error == "CircuitOpenError"
    assert not caught.value.may_have_reached_server


async def test_a_returned_refusal_is_answered_by_a_fallback() -> None:
    rt = runtime(StaticFallback("cached"), Refuse())
    function = Counted()
    assert await healkit.resilient(service="svc", runtime=rt)(function.__call__)() == "cached"
    assert function.calls == 0


async def test_a_returned_refusal_of_an_http_call_reaches_no_server(
    fault_server: FaultServer,
) -> None:
    config = {"services": {"svc": {"endpoints": [fault_server.url]}}}
    recorder = Recorder()
    async with healkit.Client(config=config, plugins=[Refuse(), recorder], entry_points=False) as c:
        with pytest.raises(healkit.CircuitOpenError):
            await c.get("/", service="svc")
    assert fault_server.requests == []
    assert ("on_error", "CircuitOpenError") in recorder.events


async def test_an_observer_returning_a_refusal_does_not_refuse() -> None:
    class Meddler:
        healkit_name = "meddler"
        healkit_observer = True

        @healkit.hookimpl
        def healkit_pre_request(self, call: healkit.CallContext) -> healkit.HealkitError:
            return healkit.CircuitOpenError(call.service, None, retry_at=0.0)

    rt = runtime(Meddler())
    function = Counted()
    assert await healkit.resilient(service="svc", runtime=rt)(function.__call__)() == "ok"
    assert function.calls == 1


async def test_other_return_values_of_pre_request_are_ignored() -> None:
    class Chatty:
        @healkit.hookimpl
        def healkit_pre_request(self) -> object:
            return "not a refusal"

    rt = runtime(Chatty())
    function = Counted()
    assert await healkit.resilient(service="svc", runtime=rt)(function.__call__)() == "ok"
    assert function.calls == 1
