"""Every error a call raises is a HealkitError; an invalid request is refused unsent.

Invalid methods, header names and values, URLs, query parameters and bodies
raise :class:`healkit.InvalidRequestError` naming the argument, before anything is
sent; a call on a client that is not open raises :class:`healkit.ClientClosedError`.
A property test feeds random requests to a real loopback server and checks that
only the tree's errors come out, and that whatever was sent is what was asked.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from tests.conftest import service_config
from tests.plugins import FailOnStatus, RetryUpTo

pytestmark = pytest.mark.anyio

MakeClient = Callable[..., healkit.Client]

TCHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"


def deeply_nested(depth: int) -> list[object]:
    root: list[object] = []
    node = root
    for _ in range(depth):
        child: list[object] = []
        node.append(child)
        node = child
    return root


INVALID = {
    "method with a space": ({"method": "GE T"}, "method 'GE T'"),
    "empty method": ({"method": ""}, "method ''"),
    "non-ASCII method": ({"method": "GÉT"}, "method 'GÉT'"),
    "CR/LF in a header value": (
        {"headers": {"X-Note": "a\r\nX-Injected: 1"}},
        "headers: the value of 'X-Note' contains a control character",
    ),
    "NUL in a header value": ({"headers": {"X-Note": "a\x00"}}, "headers: the value of 'X-Note'"),
    "header name with a space": ({"headers": {"X Note": "a"}}, "headers: 'X Note'"),
    "header name with a colon": ({"headers": {"X:Note": "a"}}, "headers: 'X:Note'"),
    "empty header name": ({"headers": {"": "a"}}, "headers: ''"),
    "header value not a str": ({"headers": {"X-Count": 1}}, "must be a str, got int"),
    "header value not UTF-8": ({"headers": {"X-Note": "\ud800"}}, "cannot be encoded"),
    "json not serialisable": ({"json": {"when": object()}}, "json= cannot be encoded"),
    "json nested too deep": ({"json": deeply_nested(100_000)}, "json= cannot be encoded"),
    "json= and data=": ({"json": {}, "data": b"x"}, "pass json= or data=, not both"),
    "data of no body type": ({"data": 123}, "data= must be bytes, str, a form"),
    "form field name not a str": ({"data": {1: "a"}}, "data: a form field name must be a str"),
    "form value not UTF-8": ({"data": {"a": "\udc80"}}, "data: the form field 'a'"),
    "form field name with a control character": (
        {"data": {"a\x1f": "b"}},
        "data: a form field name contains a control character",
    ),
    "text body not UTF-8": ({"data": "\ud800"}, "data cannot be encoded"),
    "query value of no query type": ({"params": {"a": object()}}, "params="),
    "host with a space": ({"url": "http://exa mple.test/x"}, "invalid URL: invalid host"),
    "host with a NUL": ({"url": "http://h\x00st/x"}, "invalid URL"),
    "port out of range": ({"url": "http://127.0.0.1:99999/x"}, "invalid URL"),
    "host IDNA cannot decode": ({"url": "http://xn--a/x"}, "invalid URL: invalid host"),
    "unclosed IPv6 host": ({"url": "http://[::1/x"}, "invalid URL"),
    "deadline not a number": ({"deadline": "soon"}, "deadline must be"),
    "deadline not finite": ({"deadline": math.inf}, "deadline must be"),
}


@pytest.mark.parametrize(("request_parts", "named"), INVALID.values(), ids=INVALID.keys())
async def test_an_invalid_request_is_a_request_error_and_nothing_is_sent(
    fault_server: FaultServer,
    make_client: MakeClient,
    request_parts: dict[str, Any],
    named: str,
) -> None:
    parts = dict(request_parts)
    method = parts.pop("method", "GET")
    target = parts.pop("url", "/x")
    service = None if target.startswith("http") else "svc"
    async with make_client(service_config(fault_server.url)) as client:
        with pytest.raises(healkit.InvalidRequestError) as caught:
            await client.request(method, target, service=service, **parts)
    assert named in str(caught.value)
    assert caught.value.may_have_reached_server is False
    assert fault_server.hits() == 0


async def test_a_header_value_is_named_but_never_shown(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    async with make_client(service_config(fault_server.url)) as client:
        with pytest.raises(healkit.InvalidRequestError) as caught:
            await client.get("/x", service="svc", headers={"Authorization": "Bearer s3cret\n"})
    assert "'Authorization'" in str(caught.value)
    assert "s3cret" not in str(caught.value)


async def test_a_call_on_a_closed_client_is_a_client_closed_error(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    client = make_client(service_config(fault_server.url))
    with pytest.raises(healkit.ClientClosedError):
        await client.get("/x", service="svc")  # never opened
    async with client:
        await client.get("/x", service="svc")
    with pytest.raises(healkit.ClientClosedError) as caught:
        await client.get("/x", service="svc")
    with pytest.raises(healkit.ClientClosedError):
        async with client.stream("GET", "/x", service="svc"):
            pass
    assert isinstance(caught.value, healkit.InvalidRequestError)
    assert caught.value.may_have_reached_server is False
    assert fault_server.hits() == 1


async def test_a_call_on_a_closed_adopted_session_is_a_client_closed_error(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    session = aiohttp.ClientSession()
    async with make_client(service_config(fault_server.url), session=session) as client:
        await session.close()
        with pytest.raises(healkit.ClientClosedError):
            await client.get("/x", service="svc")
    assert fault_server.hits() == 0


class CloseDuringBackoff:
    """A ManualClock that closes the client's aiohttp session during the first backoff.

    What an application closing the client from another task, while a call
    waits for its retry, does to that call.
    """

    def __init__(self) -> None:
        self.inner = ManualClock()
        self.client: healkit.Client | None = None

    def now(self) -> float:
        return self.inner.now()

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
        if self.client is not None:
            client, self.client = self.client, None
            await client.session.close()


async def test_a_client_closed_while_a_call_waits_to_retry_ends_it_with_client_closed_error(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.script("/x", Fault.status(503))
    clock = CloseDuringBackoff()
    config = service_config(fault_server.url)
    async with make_client(config, RetryUpTo(2, delay=1.0), FailOnStatus(503), clock=clock) as c:
        clock.client = c
        with pytest.raises(healkit.ClientClosedError) as caught:
            await c.get("/x", service="svc")
    assert [a.error for a in caught.value.attempts] == ["HTTPStatusError", "ClientClosedError"]
    assert fault_server.hits() == 1


# -- property: only the tree's errors come out --------------------------------------

# Valid parts are drawn more often than invalid ones, so that a request gets past
# the first check often enough for the later checks, and the sending, to be tried.
standard_methods = st.sampled_from(["GET", "post", "PUT", "DELETE", "PATCH", "OPTIONS"])
methods = st.integers(0, 3).flatmap(lambda n: st.text(max_size=8) if n == 0 else standard_methods)
tokens = st.text(TCHARS, min_size=1, max_size=12).filter(
    # Framing headers would make a valid request that the server rejects.
    lambda n: (
        n.lower()
        not in {"content-length", "transfer-encoding", "host", "expect", "connection", "upgrade"}
    )
)
header_names = st.one_of(tokens, tokens, st.text(max_size=12))
printable = st.text(string.ascii_letters + string.digits + string.punctuation + " \t", max_size=24)
header_values = st.one_of(printable, printable, printable, st.text(max_size=24))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        | st.builds(set, st.lists(st.integers(), max_size=2))
        | st.builds(object)
    ),
    max_leaves=8,
)
data_values = (
    st.none()
    | st.binary(max_size=32)
    | st.text(max_size=32)
    | st.integers()
    | st.dictionaries(st.text(max_size=4) | st.integers(), st.text(max_size=4), max_size=3)
    | st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4)), max_size=3)
    | st.builds(object)
)
paths = st.text(max_size=16)
queries = st.none() | st.dictionaries(
    st.text(max_size=4), st.text(max_size=4) | st.integers() | st.builds(object), max_size=2
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=methods,
    headers=st.dictionaries(header_names, header_values, max_size=3),
    path=paths,
    params=queries,
    body=st.one_of(
        st.tuples(json_values, st.none()),
        st.tuples(st.none(), data_values),
        st.tuples(json_values, data_values),
    ),
)
async def test_random_requests_raise_only_healkit_errors_and_send_only_valid_http(  # noqa: PLR0917 - one argument per strategy
    fault_server: FaultServer,
    make_client: MakeClient,
    method: str,
    headers: dict[str, str],
    path: str,
    params: dict[str, Any] | None,
    body: tuple[object, object],
) -> None:
    json, data = body
    sent_before = fault_server.hits()
    async with make_client(service_config(fault_server.url)) as client:
        try:
            response = await client.request(
                method,
                "/" + path,
                service="svc",
                headers=headers,
                params=params,
                json=json,
                data=data,
            )
        except healkit.InvalidRequestError as refused:
            assert fault_server.hits() == sent_before  # refused before anything was sent
            event(f"refused: {refused.message.split(' ', 1)[0]}")
            return
        except healkit.HealkitError as error:  # pragma: no cover - shown if it happens
            pytest.fail(f"a valid request failed: {error!r}")
    if response.status == 400 and response.body.startswith(b"Invalid method encountered"):
        # A valid token, but aiohttp's server knows only the registered methods.
        assert method.upper() not in {"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}
        event("sent: an extension method the server does not know")
        return
    # Sent: the server's own parser accepted it, and it is what was asked.
    assert response.status == 200, response.body
    event("sent")
    assert fault_server.hits() == sent_before + 1
    received = fault_server.requests[-1]
    assert received.method == method.upper()
    for name, value in headers.items():
        if value.isascii():
            assert received.headers.getall(name) == [value.strip(" \t")]
