"""Redirects are part of the call: healkit follows them hop by hop, under its rules.

Every case runs against real loopback servers (healkit.testing's fault server)
and counts what each server received.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

import healkit
from healkit.testing import Fault, FaultServer, ManualClock, refused_url
from healkit_retry import RetryPlugin
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

SERVICE = "api"
SECRETS = {
    "Authorization": "Bearer s3cret",
    "Proxy-Authorization": "Basic cHJveHk6cHc=",
    "Cookie": "session=abc",
    "X-Api-Key": "k3y",
    "Accept": "text/plain",
}


def document(primary: str, *, routing: dict[str, Any] | None = None, **core: Any) -> dict[str, Any]:
    service: dict[str, Any] = {"endpoints": [primary], **core}
    if routing:
        service["routing"] = routing
    return {"services": {SERVICE: service}}


def client(config: dict[str, Any], clock: ManualClock, *plugins: object) -> healkit.Client:
    return healkit.Client(
        config=config, plugins=[*plugins, TimeoutPlugin()], entry_points=False, clock=clock
    )


def moved(code: int, location: str) -> Fault:
    return Fault.status(code, headers={"Location": location})


@pytest.fixture
async def servers() -> AsyncIterator[list[FaultServer]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FaultServer()) for _ in range(2)]


# -- a redirect into the void is not a hidden resend ------------------------------


@pytest.mark.parametrize("code", [302, 307, 308])
async def test_a_post_redirected_to_a_dead_address_reaches_the_primary_once(
    fault_server: FaultServer, manual_clock: ManualClock, code: int
) -> None:
    fault_server.set_default(moved(code, f"{refused_url()}/gone"))
    async with client(document(fault_server.url), manual_clock, RetryPlugin()) as c:
        with pytest.raises(healkit.ConnectError) as caught:
            await c.post("/pay", service=SERVICE, data=b"charge 10")
    error = caught.value
    assert fault_server.hits() == 1
    assert fault_server.requests[0].body == b"charge 10"  # the primary read the whole POST
    assert error.may_have_reached_server is True
    assert "the request reached a server" in str(error)
    (attempt,) = error.attempts
    assert [(hop.status, hop.url) for hop in attempt.redirects] == [
        (code, f"{fault_server.url}/pay")
    ]
    assert attempt.redirects[0].method == ("GET" if code == 302 else "POST")


async def test_a_redirected_post_is_not_resent_to_a_fallback_group(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    primary, backup = servers
    primary.set_default(moved(307, f"{refused_url()}/gone"))
    config = document(primary.url, routing={"fallback_groups": [[backup.url]]})
    async with client(config, manual_clock, RetryPlugin()) as c:
        with pytest.raises(healkit.ConnectError) as caught:
            await c.post("/pay", service=SERVICE, data=b"charge 10")
    assert (primary.hits(), backup.hits()) == (1, 0)
    assert caught.value.may_have_reached_server is True
    assert len(caught.value.attempts) == 1


async def test_an_idempotent_request_redirected_to_a_dead_address_may_be_retried(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(moved(307, f"{refused_url()}/gone"))
    async with client(document(fault_server.url), manual_clock, RetryPlugin()) as c:
        with pytest.raises(healkit.ConnectError) as caught:
            await c.get("/x", service=SERVICE)
    assert fault_server.hits() == 3  # retry.attempts: a GET is safe to repeat
    assert all(len(a.redirects) == 1 for a in caught.value.attempts)


# -- credentials and origins --------------------------------------------------------


async def test_credentials_are_dropped_on_a_hop_to_another_origin(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    primary, other = servers
    primary.script("/start", moved(302, f"{other.url}/landing"))
    routing = {"credential_headers": ["X-Api-Key"], "allowed_origins": [primary.url, other.url]}
    async with client(document(primary.url, routing=routing), manual_clock) as c:
        response = await c.get("/start", service=SERVICE, headers=SECRETS)
    assert response.status == 200
    assert response.url == f"{other.url}/landing"
    for name in SECRETS:
        assert name in primary.requests[0].headers
    (landed,) = other.requests
    assert landed.path == "/landing"
    assert dict(landed.headers).keys() & SECRETS.keys() == {"Accept"}


async def test_a_cookie_option_and_url_credentials_stay_with_their_origin(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    primary, other = servers
    primary.script("/start", moved(307, f"{other.url}/landing"))
    with_user = primary.url.replace("http://", "http://user:pw@")
    async with client(document(primary.url), manual_clock) as c:
        await c.get(f"{with_user}/start", cookies={"session": "abc"})
    assert {"Cookie", "Authorization"} <= primary.requests[0].headers.keys()
    assert not {"Cookie", "Authorization"} & other.requests[0].headers.keys()


async def test_credentials_are_kept_on_a_hop_within_the_origin(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/start", moved(301, "/landing"))
    routing = {"credential_headers": ["X-Api-Key"]}
    async with client(document(fault_server.url, routing=routing), manual_clock) as c:
        await c.get("/start", service=SERVICE, headers=SECRETS)
    landed = fault_server.requests[1]
    assert landed.path == "/landing"
    assert {name: landed.headers[name] for name in SECRETS} == SECRETS


async def test_a_hop_outside_the_allowed_origins_is_refused(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    primary, other = servers
    primary.script("/start", moved(302, f"{other.url}/landing?token=t0p"))
    routing = {"credential_headers": ["X-Api-Key"], "allowed_origins": [primary.url]}
    async with client(document(primary.url, routing=routing), manual_clock, RetryPlugin()) as c:
        with pytest.raises(healkit.RedirectRefusedError) as caught:
            await c.get("/start", service=SERVICE, headers=SECRETS)
    error = caught.value
    assert other.hits() == 0
    assert primary.hits() == 1  # not a retryable failure
    assert error.may_have_reached_server is True
    assert (error.status, error.url) == (302, f"{primary.url}/start")
    assert error.location == f"{other.url}/landing?token=REDACTED"
    assert "allowed_origins" in str(error)


async def test_allowed_origins_always_admit_the_origin_first_asked(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    # An absolute URL of no configured service: the defaults' allowed_origins apply.
    primary, other = servers
    primary.script("/start", moved(302, "/here"))
    primary.script("/here", moved(302, f"{other.url}/there"))
    config = {"defaults": {"routing": {"allowed_origins": ["https://*.internal"]}}}
    async with client(config, manual_clock) as c:
        with pytest.raises(healkit.RedirectRefusedError) as caught:
            await c.get(f"{primary.url}/start")
    assert [r.path for r in primary.requests] == ["/start", "/here"]
    assert other.hits() == 0
    (attempt,) = caught.value.attempts
    assert [hop.location for hop in attempt.redirects] == [f"{primary.url}/here"]


@pytest.mark.parametrize(
    "location", ["ftp://files.example.com/x", "javascript:alert(1)", "file:///etc/passwd"]
)
async def test_a_hop_to_another_scheme_is_refused(
    fault_server: FaultServer, manual_clock: ManualClock, location: str
) -> None:
    fault_server.script("/start", moved(302, location))
    async with client(document(fault_server.url), manual_clock) as c:
        with pytest.raises(healkit.RedirectRefusedError, match="is not http or https") as caught:
            await c.get("/start", service=SERVICE)
    assert fault_server.hits() == 1
    scheme = location.partition(":")[0]
    assert caught.value.location == f"{scheme}:"
    assert f"to {scheme}: not followed" in str(caught.value)


# -- methods and bodies --------------------------------------------------------------


@pytest.mark.parametrize(("code", "method"), [(301, "GET"), (302, "GET"), (303, "GET")])
async def test_a_post_becomes_a_get_without_body(
    fault_server: FaultServer, manual_clock: ManualClock, code: int, method: str
) -> None:
    fault_server.script("/form", moved(code, "/done"))
    async with client(document(fault_server.url), manual_clock) as c:
        response = await c.post("/form", service=SERVICE, json={"amount": 10})
    assert response.status == 200
    first, second = fault_server.requests
    assert (first.method, first.body) == ("POST", b'{"amount":10}')
    assert (second.method, second.path, second.body) == (method, "/done", b"")
    assert "Content-Type" not in second.headers


async def test_a_303_after_a_put_is_a_get_and_a_301_keeps_the_put(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/a", moved(303, "/b"))
    fault_server.script("/c", moved(301, "/d"))
    async with client(document(fault_server.url), manual_clock) as c:
        await c.put("/a", service=SERVICE, data=b"x")
        await c.put("/c", service=SERVICE, data=b"y")
    assert [(r.method, r.path, r.body) for r in fault_server.requests] == [
        ("PUT", "/a", b"x"),
        ("GET", "/b", b""),
        ("PUT", "/c", b"y"),
        ("PUT", "/d", b"y"),
    ]


@pytest.mark.parametrize("code", [307, 308])
async def test_307_and_308_resend_method_and_body(
    fault_server: FaultServer, manual_clock: ManualClock, code: int
) -> None:
    fault_server.script("/upload", moved(code, "/stored"))
    async with client(document(fault_server.url), manual_clock) as c:
        response = await c.post("/upload", service=SERVICE, data=b"payload")
    assert response.status == 200
    assert [(r.method, r.path, r.body) for r in fault_server.requests] == [
        ("POST", "/upload", b"payload"),
        ("POST", "/stored", b"payload"),
    ]


async def test_a_streamed_body_is_not_resent_by_a_307(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"part 1,"
        yield b"part 2"

    fault_server.script("/upload", moved(307, "/stored"))
    async with client(document(fault_server.url), manual_clock, RetryPlugin()) as c:
        with pytest.raises(healkit.RedirectRefusedError, match="cannot be sent again"):
            await c.post("/upload", service=SERVICE, data=chunks())
    assert fault_server.hits() == 1
    assert fault_server.requests[0].body == b"part 1,part 2"


# -- limits and switches ---------------------------------------------------------


async def test_more_redirects_than_max_redirects_is_an_error(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(moved(302, "/again"))
    config = document(fault_server.url, max_redirects=2)
    async with client(config, manual_clock, RetryPlugin()) as c:
        with pytest.raises(healkit.TooManyRedirects) as caught:
            await c.get("/start", service=SERVICE)
    error = caught.value
    assert isinstance(error, healkit.LimitError)
    assert error.limit == 2
    assert error.may_have_reached_server is True
    assert fault_server.hits() == 3  # the first answer and two followed hops; never retried
    assert len(error.attempts) == 1
    assert len(error.attempts[0].redirects) == 2


async def test_max_redirects_per_request_and_zero(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(moved(302, "/again"))
    async with client(document(fault_server.url), manual_clock) as c:
        with pytest.raises(healkit.TooManyRedirects):
            await c.get("/start", service=SERVICE, max_redirects=0)
        assert fault_server.hits() == 1
        with pytest.raises(healkit.InvalidRequestError, match="max_redirects"):
            await c.get("/start", service=SERVICE, max_redirects=-1)
        with pytest.raises(healkit.InvalidRequestError, match="allow_redirects"):
            await c.get("/start", service=SERVICE, allow_redirects="no")


async def test_follow_redirects_false_returns_the_redirect(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/start", moved(307, "/landing"))
    config = document(fault_server.url, follow_redirects=False)
    async with client(config, manual_clock) as c:
        response = await c.post("/start", service=SERVICE, data=b"x")
        assert response.status == 307
        assert response.headers["Location"] == "/landing"
        assert response.outcome is not None
        assert response.outcome.redirects == ()
        # A request may still ask for them to be followed.
        fault_server.script("/start", moved(307, "/landing"))
        followed = await c.post("/start", service=SERVICE, data=b"x", allow_redirects=True)
    assert followed.status == 200
    assert [r.path for r in fault_server.requests] == ["/start", "/start", "/landing"]


async def test_a_redirect_without_location_is_the_answer(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/start", Fault.status(302))
    async with client(document(fault_server.url), manual_clock) as c:
        response = await c.get("/start", service=SERVICE)
    assert response.status == 302
    assert fault_server.hits() == 1


def test_redirect_settings_are_validated() -> None:
    for bad in ({"max_redirects": -1}, {"max_redirects": 51}, {"follow_redirects": "yes"}):
        with pytest.raises(healkit.ConfigError) as caught:
            healkit.Runtime(config=document("http://a.test", **bad), entry_points=False)
        (key,) = bad
        assert caught.value.path == f"$.services.{SERVICE}.{key}"


# -- the record of the hops ---------------------------------------------------------


async def test_hops_are_recorded_on_the_outcome_and_in_the_attempt_history(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    primary, other = servers
    primary.script("/a", moved(301, "/b?api_key=secret"))
    primary.script("/b", moved(303, f"{other.url}/c"))
    async with client(document(primary.url), manual_clock) as c:
        response = await c.post("/a", service=SERVICE, data=b"x")
    assert response.status == 200
    outcome = response.outcome
    assert outcome is not None
    assert outcome.path == "primary"
    assert outcome.redirects == outcome.attempts[0].redirects
    assert [(h.url, h.status, h.location, h.method) for h in outcome.redirects] == [
        (f"{primary.url}/a", 301, f"{primary.url}/b?api_key=REDACTED", "GET"),
        (f"{primary.url}/b?api_key=REDACTED", 303, f"{other.url}/c", "GET"),
    ]
    assert "after 2 redirects" in outcome.attempts[0].describe()


async def test_a_failed_hop_is_in_the_error_history(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/a", moved(307, "/b"))
    fault_server.script("/b", Fault.reset())
    async with client(document(fault_server.url), manual_clock) as c:
        with pytest.raises(healkit.ConnectionLostError) as caught:
            await c.post("/a", service=SERVICE, data=b"x")
    (attempt,) = caught.value.attempts
    assert [hop.location for hop in attempt.redirects] == [f"{fault_server.url}/b"]
    assert attempt.error == "ConnectionLostError"


# -- the streaming path ----------------------------------------------------------


async def test_streaming_follows_redirects_under_the_same_rules(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    primary, other = servers
    primary.script("/feed", moved(307, f"{other.url}/feed"))
    other.script("/feed", Fault.ok(body=b"chunked data"))
    routing = {"credential_headers": ["X-Api-Key"]}
    async with (
        client(document(primary.url, routing=routing), manual_clock) as c,
        c.stream("GET", "/feed", service=SERVICE, headers=SECRETS) as response,
    ):
        assert await response.read() == b"chunked data"
        assert response.url == f"{other.url}/feed"
        assert response.outcome is not None
        assert [h.status for h in response.outcome.redirects] == [307]
    assert dict(other.requests[0].headers).keys() & SECRETS.keys() == {"Accept"}


async def test_streaming_post_into_the_void_is_not_resent(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(moved(308, f"{refused_url()}/gone"))
    async with client(document(fault_server.url), manual_clock, RetryPlugin()) as c:
        with pytest.raises(healkit.ConnectError) as caught:
            async with c.stream("POST", "/pay", service=SERVICE, data=b"charge"):
                pass
    assert fault_server.hits() == 1
    assert caught.value.may_have_reached_server is True


async def test_streaming_refuses_a_disallowed_hop(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    primary, other = servers
    primary.script("/feed", moved(302, f"{other.url}/feed"))
    routing = {"allowed_origins": [primary.url]}
    async with client(document(primary.url, routing=routing), manual_clock) as c:
        with pytest.raises(healkit.RedirectRefusedError):
            async with c.stream("GET", "/feed", service=SERVICE):
                pass
    assert other.hits() == 0


# -- the outcome header is healkit's ------------------------------------------------


async def test_an_upstream_outcome_header_is_stripped(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.ok(headers={healkit.OUTCOME_HEADER: "degraded", "X-Kept": "1"}))
    async with client(document(fault_server.url), manual_clock) as c:
        response = await c.get("/x", service=SERVICE)
        async with c.stream("GET", "/x", service=SERVICE) as streamed:
            assert healkit.OUTCOME_HEADER not in streamed.headers
    assert response.outcome is not None
    assert response.outcome.path == "primary"
    assert healkit.OUTCOME_HEADER not in response.headers
    assert response.headers["X-Kept"] == "1"


async def test_a_fallback_endpoint_cannot_claim_another_outcome(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    backup = servers[0]
    backup.set_default(Fault.ok(headers={healkit.OUTCOME_HEADER: "degraded"}))
    config = document(refused_url(), routing={"fallback_groups": [[backup.url]]})
    async with client(config, manual_clock) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.headers.getall(healkit.OUTCOME_HEADER) == ["fallback"]


# -- the aiohttp middleware: aiohttp follows, healkit's rules hold per hop -----------


def middleware_session(config: dict[str, Any], *plugins: object) -> aiohttp.ClientSession:
    runtime = healkit.Runtime(config=config, plugins=plugins, entry_points=False)
    return aiohttp.ClientSession(middlewares=[healkit.ResilienceMiddleware(runtime)])


async def test_middleware_a_redirected_post_into_the_void_is_not_resent(
    fault_server: FaultServer,
) -> None:
    dead = refused_url()
    fault_server.set_default(moved(307, f"{dead}/gone"))
    async with middleware_session(document(fault_server.url), RetryPlugin()) as session:
        with pytest.raises(healkit.ConnectError) as caught:
            await session.post(f"{fault_server.url}/pay", data=b"charge 10")
    error = caught.value
    assert fault_server.hits() == 1
    assert error.may_have_reached_server is True
    (attempt,) = error.attempts  # the hop's call: not retried
    assert attempt.endpoint == dead
    assert [(hop.status, hop.url) for hop in attempt.redirects] == [
        (307, f"{fault_server.url}/pay")
    ]


async def test_middleware_drops_configured_credentials_across_origins(
    servers: list[FaultServer],
) -> None:
    primary, other = servers
    primary.script("/start", moved(302, f"{other.url}/landing"))
    routing = {"credential_headers": ["X-Api-Key"]}
    async with (
        middleware_session(document(primary.url, routing=routing)) as session,
        session.get(f"{primary.url}/start", headers=SECRETS) as response,
    ):
        assert response.status == 200
    assert primary.requests[0].headers["X-Api-Key"] == "k3y"
    assert dict(other.requests[0].headers).keys() & SECRETS.keys() == {"Accept"}


async def test_middleware_refuses_a_hop_outside_the_allowed_origins(
    servers: list[FaultServer],
) -> None:
    primary, other = servers
    primary.script("/start", moved(302, f"{other.url}/landing"))
    routing = {"allowed_origins": [primary.url]}
    async with middleware_session(document(primary.url, routing=routing)) as session:
        with pytest.raises(healkit.RedirectRefusedError) as caught:
            await session.get(f"{primary.url}/start")
    assert other.hits() == 0
    assert caught.value.location == f"{other.url}/landing"


async def test_middleware_enforces_max_redirects_and_follow_redirects(
    fault_server: FaultServer,
) -> None:
    fault_server.set_default(moved(302, "/again"))
    async with middleware_session(document(fault_server.url, max_redirects=2)) as session:
        with pytest.raises(healkit.TooManyRedirects):
            await session.get(f"{fault_server.url}/start")
    assert fault_server.hits() == 3
    async with middleware_session(document(fault_server.url, follow_redirects=False)) as session:
        with pytest.raises(healkit.RedirectRefusedError, match="follow_redirects"):
            await session.get(f"{fault_server.url}/start")
        async with session.get(f"{fault_server.url}/start", allow_redirects=False) as response:
            assert response.status == 302
        # The redirect was not followed: the next request is not taken for its hop.
        async with session.get(f"{fault_server.url}/elsewhere", allow_redirects=False) as again:
            assert again.status == 302


async def test_middleware_303_is_a_get_and_307_keeps_the_post(fault_server: FaultServer) -> None:
    fault_server.script("/a", moved(303, "/b"))
    fault_server.script("/c", moved(307, "/d"))
    async with middleware_session(document(fault_server.url)) as session:
        for path in ("/a", "/c"):
            async with session.post(f"{fault_server.url}{path}", data=b"x") as response:
                assert response.status == 200
    assert [(r.method, r.path, r.body) for r in fault_server.requests] == [
        ("POST", "/a", b"x"),
        ("GET", "/b", b""),
        ("POST", "/c", b"x"),
        ("POST", "/d", b"x"),
    ]
