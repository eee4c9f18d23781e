"""``Response.outcome``: set on every response a call returns, an error on any other."""

from __future__ import annotations

import httpx
import pytest

import healkit
import healkit.httpx
from healkit.testing import Fault, FaultServer

pytestmark = pytest.mark.anyio


class ReadsOutcomeEarly:
    """Reads ``response.outcome`` in ``healkit_post_response``, before the call ended."""

    healkit_name = "reads-outcome-early"

    def __init__(self) -> None:
        self.seen: list[BaseException] = []

    @healkit.hookimpl
    def healkit_post_response(self, response: healkit.Response | None) -> None:
        assert response is not None
        try:
            _ = response.outcome
        except healkit.OutcomeUnavailableError as error:
            self.seen.append(error)


async def test_a_response_a_call_returns_has_its_outcome(fault_server: FaultServer) -> None:
    fault_server.script("/v1/items/1", then=Fault.json({"id": 1}))
    early = ReadsOutcomeEarly()
    config = {"services": {"inventory": {"endpoints": [fault_server.url]}}}
    async with healkit.Client(config=config, entry_points=False, plugins=[early]) as client:
        response = await client.get("/v1/items/1", service="inventory")
    outcome: healkit.Outcome = response.outcome
    assert outcome.path == "primary"
    assert outcome.service == "inventory"
    assert [attempt.status for attempt in outcome.attempts] == [200]
    # inside the pipeline the call had not ended yet
    assert len(early.seen) == 1
    assert "no healkit call returned it" in str(early.seen[0])


def test_a_response_no_call_returned_has_none() -> None:
    response = healkit.Response(503, body=b"down")
    with pytest.raises(healkit.OutcomeUnavailableError, match="no outcome") as raised:
        _ = response.outcome
    error = raised.value
    assert isinstance(error, healkit.HealkitError)
    assert isinstance(error, LookupError)
    assert error.may_have_reached_server is False
    assert error.attempts == ()
    assert repr(response) == "<Response 503  path=?>"
    with pytest.raises(healkit.HTTPStatusError) as status:
        response.raise_for_status()
    assert status.value.attempts == ()


def test_outcome_of_a_foreign_httpx_response() -> None:
    with pytest.raises(healkit.OutcomeUnavailableError, match="httpx transport") as raised:
        healkit.httpx.outcome_of(httpx.Response(200))
    assert isinstance(raised.value, LookupError)
