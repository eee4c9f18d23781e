"""Secrets planted in requests and settings never come out of healkit's errors or reach strangers.

Each test plants a unique marker where a user puts a secret (a URL's userinfo,
a token in its query string, an etcd password) and looks for it in what the
user sees: the error, its ``repr``, the traceback an application logs with
``logger.exception`` (every chained cause included), the command line's
output; or in what a server that was not configured received.
"""

from __future__ import annotations

import traceback

import aiohttp
import pytest
from aiohttp.http_exceptions import HttpProcessingError

import healkit
from healkit._redact import URL_REDACTED, without_userinfo
from healkit.etcd import EtcdClient
from healkit.testing import Fault, FaultServer, capture_events
from healkit_hedge import HedgePlugin
from tests.cli_support import cli

pytestmark = pytest.mark.anyio

MARKER = "planted-secret-7f3a"

BEARER = {"Authorization": f"Bearer {MARKER}"}
ETCD_HEADER = {"cluster_id": "1", "member_id": "1", "revision": "1", "raft_term": "1"}

MALFORMED_ANSWERS = {
    "garbage status line": Fault.garbage_status_line(),
    "oversized headers": Fault.oversized_headers(),
    "bad chunking": Fault.bad_chunking(),
    "bad content length": Fault.malformed(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
}


def everything_shown(error: BaseException) -> str:
    """All the text an application can get out of ``error``: message, repr, traceback, causes."""
    parts = ["".join(traceback.format_exception(error))]
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        parts += [str(cause), repr(cause), repr(getattr(cause, "__notes__", None))]
        cause = cause.__cause__
    return "\n".join(parts)


def secret_url(server: FaultServer) -> str:
    """A URL of ``server`` with the marker in its userinfo and in a token of its query."""
    with_userinfo = server.url.replace("http://", f"http://user:{MARKER}@")
    return f"{with_userinfo}/pay?token={MARKER}&page=2"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://u:pw@h.test:1/x?y=@z", "http://h.test:1/x?y=@z"),
        ("u:pw@h.test:2379", "h.test:2379"),  # no scheme
        ("http://u:p@ss@h.test/", "http://h.test/"),  # an unencoded @ in the password
        ("http://u:pw@[::1", "http://[::1"),  # does not parse
        ("http://h.test/@x?k=@v#@f", "http://h.test/@x?k=@v#@f"),  # @ after the authority
        ("http://h.test", "http://h.test"),
    ],
)
def test_without_userinfo_works_on_text_that_may_not_parse(text: str, shown: str) -> None:
    assert without_userinfo(text) == shown


@pytest.mark.parametrize("fault", MALFORMED_ANSWERS.values(), ids=MALFORMED_ANSWERS.keys())
async def test_a_malformed_answer_error_and_its_causes_hold_no_url_secret(
    fault_server: FaultServer, fault: Fault
) -> None:
    # aiohttp reports an unparsable answer as ClientResponseError, whose str is
    # the request's URL as sent (query included) and whose repr shows the
    # request's headers: it must not be the __cause__.
    fault_server.set_default(fault)
    async with healkit.Client(entry_points=False) as client:
        with pytest.raises(healkit.ProtocolError) as caught:
            await client.get(secret_url(fault_server), headers=BEARER)
    assert MARKER not in everything_shown(caught.value)
    assert f"token={URL_REDACTED}" in str(caught.value)
    # What the parser found wrong is still the cause, for whoever debugs it.
    assert isinstance(caught.value.__cause__, HttpProcessingError)


async def test_a_malformed_answer_after_a_redirect_holds_no_url_secret() -> None:
    async with FaultServer() as first, FaultServer() as second:
        first.set_default(
            Fault.status(307, headers={"Location": f"{second.url}/next?sig={MARKER}"})
        )
        second.set_default(Fault.garbage_status_line())
        async with healkit.Client(entry_points=False) as client:
            with pytest.raises(healkit.ProtocolError) as caught:
                await client.get(f"{first.url}/start")
    assert MARKER not in everything_shown(caught.value)


async def test_the_middleware_maps_a_malformed_answer_without_the_url_secret(
    fault_server: FaultServer,
) -> None:
    fault_server.set_default(Fault.garbage_status_line())
    runtime = healkit.Runtime(entry_points=False)
    async with aiohttp.ClientSession(
        middlewares=[healkit.ResilienceMiddleware(runtime)]
    ) as session:
        with pytest.raises(healkit.ProtocolError) as caught:
            await session.get(secret_url(fault_server))
    assert MARKER not in everything_shown(caught.value)


async def test_a_header_routing_calls_a_credential_is_not_logged(
    fault_server: FaultServer,
) -> None:
    # routing.credential_headers declares X-Api-Key a credential of the service
    # (withheld from other origins): a failed call's log must not print it.
    fault_server.set_default(Fault.reset())
    routing = {"credential_headers": ["X-Api-Key"]}
    config = {"services": {"svc": {"endpoints": [fault_server.url], "routing": routing}}}
    with capture_events() as events:
        async with healkit.Client(config=config, entry_points=False) as client:
            with pytest.raises(healkit.ConnectionLostError):
                await client.get("/x", service="svc", headers={"X-Api-Key": MARKER})
    (failed,) = [e for e in events if e["event"] == "healkit.call_failed"]
    assert failed["headers"] == {"X-Api-Key": "[REDACTED]"}
    assert MARKER not in repr(events)


async def test_the_repr_of_a_response_shows_its_url_without_the_query(
    fault_server: FaultServer,
) -> None:
    async with healkit.Client(entry_points=False) as client:
        response = await client.get(secret_url(fault_server))
        async with client.stream("GET", secret_url(fault_server)) as streamed:
            streamed_repr = repr(streamed)
    assert repr(response) == f"<Response 200 {fault_server.url}/pay path=primary>"
    assert MARKER not in streamed_repr
    # The attribute is the URL as sent, less its userinfo (as documented).
    assert response.url == f"{fault_server.url}/pay?token={MARKER}&page=2"


async def test_the_repr_of_a_call_context_redacts_its_target(fault_server: FaultServer) -> None:
    seen: list[str] = []

    class Observer:
        @healkit.hookimpl
        def healkit_pre_request(
            self, call: healkit.CallContext, attempt: healkit.AttemptContext
        ) -> None:
            seen.extend((repr(call), repr(attempt)))

    async with healkit.Client(plugins=[Observer()], entry_points=False) as client:
        await client.get(secret_url(fault_server))
    assert seen[0] == (f"<CallContext 127.0.0.1 GET /pay?token={URL_REDACTED}&page=2 path=primary>")
    assert MARKER not in "".join(seen)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"http://user:{MARKER}@\u2100.example/", "invalid characters under NFKC"),
        (f"http://user:{MARKER}@[::1/", "Invalid IPv6 URL"),
    ],
)
async def test_an_unparsable_url_error_says_why_without_its_userinfo(url: str, reason: str) -> None:
    async with healkit.Client(entry_points=False) as client:
        with pytest.raises(healkit.InvalidRequestError) as caught:
            await client.get(url)
    assert reason in str(caught.value)
    assert MARKER not in everything_shown(caught.value)
    # Not even as a hidden context: an error reporter may walk __context__.
    assert caught.value.__context__ is None


async def test_a_hedge_to_an_endpoint_of_another_origin_carries_no_credentials() -> None:
    # A guard: the routing rule (credentials stay with the first endpoint's
    # origin) holds for hedges too, which run while the first attempt is in flight.
    async with FaultServer() as first, FaultServer() as other:
        first.set_default(Fault.ok(latency=5.0))
        stranger = other.url.replace("127.0.0.1", "localhost")  # another origin
        hedge = {"enabled": True, "delay": 0.01, "min_delay": 0.01}
        config = {"services": {"svc": {"endpoints": [first.url, stranger], "hedge": hedge}}}
        async with healkit.Client(
            config=config, plugins=[HedgePlugin()], entry_points=False
        ) as client:
            response = await client.get(
                "/x", service="svc", headers={**BEARER, "Cookie": f"s={MARKER}"}
            )
        hedged = response.outcome.attempts if response.outcome else ()
        assert [a.hedge for a in hedged] == [False, True]
        assert first.requests[0].headers["Authorization"] == f"Bearer {MARKER}"
        (request,) = other.requests
    assert MARKER not in repr(list(request.headers.items()))


async def test_the_etcd_password_is_not_sent_where_an_endpoint_redirects() -> None:
    # etcd never redirects; whatever answers 307 at its address (a proxy, a
    # hijacked port) must not receive the password's resend at another origin.
    async with FaultServer() as endpoint, FaultServer() as elsewhere:
        location = f"{elsewhere.url}/v3/auth/authenticate"
        endpoint.set_default(Fault.status(307, headers={"Location": location}))
        async with EtcdClient([endpoint.url], username="root", password=MARKER) as client:
            with pytest.raises(healkit.EtcdProtocolError) as caught:
                await client.get(b"/healkit/x")
        assert [r.path for r in endpoint.requests] == ["/v3/auth/authenticate"]
    assert elsewhere.requests == []
    assert "HTTP 307" in str(caught.value)
    assert MARKER not in everything_shown(caught.value)


async def test_the_etcd_token_is_not_in_an_etcd_error_or_its_causes() -> None:
    # An etcd endpoint (here a server that answers as etcd's gateway does) that
    # logs the client in, then answers a request with something that is not HTTP.
    async with FaultServer() as endpoint:
        reply = {"header": ETCD_HEADER, "token": f"{MARKER}.1"}
        endpoint.script("/v3/auth/authenticate", Fault.json(reply))
        endpoint.set_default(Fault.garbage_status_line())
        async with EtcdClient([endpoint.url], username="root", password=MARKER) as client:
            with pytest.raises(healkit.EtcdUnavailableError) as caught:
                await client.get(b"/healkit/x")
        sent = [r.headers.get("Authorization") for r in endpoint.requests]
    assert sent == [None, f"{MARKER}.1"]  # the token was used: it could have leaked
    assert MARKER not in everything_shown(caught.value)


@pytest.mark.parametrize(
    "endpoint",
    [
        f"http://root:{MARKER}@\u2100:2379",
        f"http://root:{MARKER}@[::1:2379",
        f"ftp://root:{MARKER}@etcd-0:2379",
        f"root:{MARKER}@etcd-0:2379",
    ],
)
def test_an_etcd_client_refuses_credentials_in_an_endpoint_without_quoting_them(
    endpoint: str,
) -> None:
    with pytest.raises(ValueError, match="credentials") as caught:
        EtcdClient([endpoint])
    assert MARKER not in everything_shown(caught.value)


@pytest.mark.parametrize(
    "endpoints",
    [
        f"http://root:{MARKER}@127.0.0.1:2379",
        f"http://root:{MARKER}@\u2100:2379",
        f"https://etcd-0:2379,http://root:{MARKER}@[::1:2379",
    ],
)
def test_the_cli_does_not_echo_an_etcd_password_given_in_an_endpoint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, endpoints: str
) -> None:
    flag = cli(capsys, "status", "--endpoints", endpoints)
    assert flag.status == 2
    assert "no credentials in the URL" in flag.err
    assert MARKER not in flag.out + flag.err
    monkeypatch.setenv("HEALKIT_ETCD_ENDPOINTS", endpoints)
    env = cli(capsys, "config", "get")
    assert env.status == 2
    assert "no credentials in the URL" in env.err
    assert MARKER not in env.out + env.err
