"""Red-team findings against hostile upstreams (issue 11), each a reproduction.

Every case runs against real loopback servers (healkit.testing's fault server)
and looks at what each server received.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import unquote

import aiohttp
import httpx
import pytest

import healkit
import healkit.httpx
from healkit.testing import Fault, FaultServer
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

SERVICE = "api"
LONG_LABEL = "a" * 64  # one more than DNS allows: the resolver's IDNA codec raises UnicodeError
BAD_HOSTS = [
    f"http://{LONG_LABEL}/x",
    f"http://{LONG_LABEL}.test:8080/x",
    "http://" + ".".join(["a" * 60] * 5) + "/x",  # 304 characters
]


def document(primary: str, **routing: Any) -> dict[str, Any]:
    service: dict[str, Any] = {"endpoints": [primary]}
    if routing:
        service["routing"] = routing
    return {"services": {SERVICE: service}}


def client(config: dict[str, Any], session: aiohttp.ClientSession | None = None) -> healkit.Client:
    return healkit.Client(
        config=config, session=session, plugins=[TimeoutPlugin()], entry_points=False
    )


def moved(location: str, code: int = 302) -> Fault:
    return Fault.status(code, headers={"Location": location})


def credentials(server: FaultServer) -> dict[str, str]:
    """The credential headers of every request ``server`` received."""
    return {
        name: value
        for request in server.requests
        for name, value in request.headers.items()
        if name.lower() in {"authorization", "cookie"}
    }


@pytest.fixture
async def servers() -> AsyncIterator[list[FaultServer]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FaultServer()) for _ in range(2)]


# -- a Location whose host cannot be resolved is refused, inside the error tree --------


@pytest.mark.parametrize("location", BAD_HOSTS)
async def test_a_redirect_to_a_host_no_resolver_accepts_is_refused(
    fault_server: FaultServer, location: str
) -> None:
    # Old code: the hop went to aiohttp, whose resolver raised UnicodeError
    # ("label too long") straight out of client.get.
    fault_server.set_default(moved(location))
    async with client(document(fault_server.url)) as c:
        with pytest.raises(healkit.RedirectRefusedError) as caught:
            await c.get("/start", service=SERVICE)
    assert "the Location is not a URL healkit can follow" in str(caught.value)
    assert caught.value.may_have_reached_server is True
    assert fault_server.hits() == 1


@pytest.mark.parametrize("url", BAD_HOSTS)
async def test_the_middleware_refuses_a_url_no_resolver_accepts(url: str) -> None:
    # Old code: UnicodeError out of session.get (the Client already refused it).
    async with (
        healkit.Client(plugins=[TimeoutPlugin()], entry_points=False),
        aiohttp.ClientSession(middlewares=[healkit.ResilienceMiddleware()]) as session,
    ):
        with pytest.raises(healkit.InvalidRequestError, match="invalid URL: invalid host"):
            await session.get(url)


async def test_the_middleware_refuses_a_redirect_to_a_host_no_resolver_accepts(
    fault_server: FaultServer,
) -> None:
    fault_server.set_default(moved(BAD_HOSTS[0]))
    async with (
        healkit.Client(plugins=[TimeoutPlugin()], entry_points=False),
        aiohttp.ClientSession(middlewares=[healkit.ResilienceMiddleware()]) as session,
    ):
        with pytest.raises(healkit.HealkitError):
            await session.get(f"{fault_server.url}/start")
    assert fault_server.hits() == 1


# -- credentials the caller's session adds to every request ----------------------------


async def test_a_session_default_authorization_is_not_sent_to_another_origin(
    servers: list[FaultServer],
) -> None:
    # Old code: aiohttp merged the session's default headers into the hop, and
    # the other origin received "Authorization: Bearer s3cret".
    primary, other = servers
    primary.script("/start", moved(f"{other.url}/landing"))
    async with (
        aiohttp.ClientSession(headers={"Authorization": "Bearer s3cret"}) as session,
        client(document(primary.url), session) as c,
    ):
        with pytest.raises(healkit.RedirectRefusedError) as caught:
            await c.get("/start", service=SERVICE)
    assert "the session sends Authorization with every request" in str(caught.value)
    assert other.requests == []
    assert credentials(primary) == {"Authorization": "Bearer s3cret"}


async def test_a_session_default_credential_header_is_judged_by_routing_credential_headers(
    servers: list[FaultServer],
) -> None:
    primary, other = servers
    primary.script("/start", moved(f"{other.url}/landing"))
    config = document(primary.url, credential_headers=["X-Api-Key"])
    async with (
        aiohttp.ClientSession(headers={"x-api-key": "k3y", "Accept": "text/plain"}) as session,
        client(config, session) as c,
    ):
        with pytest.raises(healkit.RedirectRefusedError, match="the session sends x-api-key"):
            await c.get("/start", service=SERVICE)
    assert other.requests == []


@pytest.mark.filterwarnings("ignore:.*(BasicAuth|'auth' parameter).*:DeprecationWarning")
async def test_a_session_auth_is_not_sent_to_another_origin(servers: list[FaultServer]) -> None:
    primary, other = servers
    primary.script("/start", moved(f"{other.url}/landing"))
    async with (
        aiohttp.ClientSession(auth=aiohttp.BasicAuth("user", "pw")) as session,
        client(document(primary.url), session) as c,
    ):
        with pytest.raises(healkit.RedirectRefusedError, match="the session's auth"):
            await c.get("/start", service=SERVICE)
    assert other.requests == []


async def test_a_session_with_default_credentials_still_follows_a_same_origin_hop(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/start", moved(f"{fault_server.url}/landing"))
    async with (
        aiohttp.ClientSession(headers={"Authorization": "Bearer s3cret"}) as session,
        client(document(fault_server.url), session) as c,
    ):
        response = await c.get("/start", service=SERVICE)
    assert response.status == 200
    assert [r.path for r in fault_server.requests] == ["/start", "/landing"]


async def test_a_session_without_credentials_follows_a_hop_to_another_origin(
    servers: list[FaultServer],
) -> None:
    primary, other = servers
    primary.script("/start", moved(f"{other.url}/landing"))
    async with (
        aiohttp.ClientSession(headers={"Accept": "text/plain"}) as session,
        client(document(primary.url), session) as c,
    ):
        response = await c.get("/start", service=SERVICE)
    assert response.status == 200
    assert [r.path for r in other.requests] == ["/landing"]


async def test_a_session_default_authorization_is_not_sent_to_a_fallback_of_another_origin(
    servers: list[FaultServer],
) -> None:
    primary, backup = servers
    primary.set_default(Fault.status(503))
    config = document(primary.url, fallback_groups=[[backup.url]])
    async with (
        aiohttp.ClientSession(headers={"Authorization": "Bearer s3cret"}) as session,
        client(config, session) as c,
    ):
        # Old code: the fallback answered, and received "Authorization: Bearer s3cret".
        with pytest.raises(healkit.InvalidRequestError, match="the session sends Authorization"):
            await c.get("/b", service=SERVICE)
    assert backup.hits() == 0


async def test_session_cookies_are_not_sent_on_a_hop_to_another_origin(
    servers: list[FaultServer],
) -> None:
    primary, other = servers
    primary.script("/start", moved(f"{other.url}/landing"))
    async with (
        aiohttp.ClientSession(cookies={"session": "abc"}) as session,
        client(document(primary.url), session) as c,
    ):
        # Old code: the hop was sent, with "Cookie: session=abc".
        with pytest.raises(healkit.RedirectRefusedError, match="cookies without a domain"):
            await c.get("/start", service=SERVICE)
    assert other.hits() == 0


# -- a status outside 100-599 is not a response ----------------------------------------


def answer_with_status(code: str) -> Fault:
    return Fault.malformed(
        f"HTTP/1.1 {code} Odd\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode()
    )


async def fetch(path: str, c: healkit.Client, url: str) -> None:
    """GET ``url`` through one of healkit's four HTTP paths."""
    if path == "buffered":
        await c.get("/a", service=SERVICE)
    elif path == "stream":
        async with c.stream("GET", "/a", service=SERVICE):
            pass
    elif path == "middleware":
        async with (
            aiohttp.ClientSession(middlewares=[healkit.ResilienceMiddleware()]) as session,
            session.get(url),
        ):
            pass
    else:
        transport = healkit.httpx.ResilientTransport(runtime=c.runtime)
        async with httpx.AsyncClient(transport=transport) as hx:
            await hx.get(url)


@pytest.mark.parametrize("code", ["000", "999", "600"])
@pytest.mark.parametrize("path", ["buffered", "stream", "middleware", "httpx"])
async def test_a_status_outside_100_to_599_is_a_protocol_error(
    fault_server: FaultServer, code: str, path: str
) -> None:
    # Old code (aiohttp accepts any three digits): a response with status 0 or
    # 999, judged a success by breakers and ejection. httpx's h11 refused 000 only.
    fault_server.set_default(answer_with_status(code))
    async with client(document(fault_server.url)) as c:
        with pytest.raises(healkit.ProtocolError) as caught:
            await fetch(path, c, f"{fault_server.url}/a")
    if (path, code) != ("httpx", "000"):  # h11's own words
        assert f"status {int(code)} is not an HTTP status (100 to 599)" in str(caught.value)
    assert caught.value.may_have_reached_server is True
    assert fault_server.hits() >= 1


async def test_an_endpoint_answering_999_is_failed_over_like_any_broken_endpoint(
    servers: list[FaultServer],
) -> None:
    primary, backup = servers
    primary.set_default(answer_with_status("999"))
    async with client(document(primary.url, fallback_groups=[[backup.url]])) as c:
        response = await c.get("/a", service=SERVICE)
    assert response.status == 200
    assert response.outcome.path == "fallback"
    assert response.outcome.endpoint == backup.url


# -- request options aiohttp refuses with its own exceptions ---------------------------


def closed_file() -> io.BytesIO:
    body = io.BytesIO(b"x")
    body.close()
    return body


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"data": "closed-file"}, "data= is a closed file", id="closed-file"),
        pytest.param({"cookies": {"a b": "c"}}, "'a b' is not a cookie name", id="cookie-name"),
        pytest.param({"cookies": [("a;b", "c")]}, "not a cookie name", id="cookie-pairs"),
        pytest.param({"cookies": "a=b"}, "cookies= must be a mapping", id="cookie-type"),
        pytest.param({"ssl": "yes"}, "ssl= must be None, a bool", id="ssl-type"),
    ],
)
async def test_an_option_aiohttp_refuses_is_a_request_error(
    fault_server: FaultServer, options: dict[str, Any], message: str
) -> None:
    # Old code: aiohttp's ValueError, CookieError and TypeError escaped the error tree.
    if options.get("data") == "closed-file":
        options = {"data": closed_file()}
    async with client(document(fault_server.url)) as c:
        with pytest.raises(healkit.InvalidRequestError, match=message):
            await c.post("/a", service=SERVICE, **options)
    assert fault_server.hits() == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"compress": "deflate", "headers": {"Content-Encoding": "gzip"}, "data": b"x"},
            "compress can not be set if Content-Encoding header is set",
            id="compress",
        ),
        pytest.param(
            {"chunked": True, "headers": {"Content-Length": "1"}, "data": b"x"},
            "chunked can not be set if",
            id="chunked",
        ),
    ],
)
async def test_an_option_aiohttp_refuses_while_building_the_request_is_a_request_error(
    fault_server: FaultServer, options: dict[str, Any], message: str
) -> None:
    # Old code: aiohttp's ValueError out of client.post; these are only known
    # to aiohttp's ClientRequest, so healkit maps them where it calls aiohttp.
    async with client(document(fault_server.url)) as c:
        with pytest.raises(
            healkit.InvalidRequestError, match="aiohttp refused the request's options: "
        ):
            await c.post("/a", service=SERVICE, **options)
        with pytest.raises(healkit.InvalidRequestError, match=message):
            async with c.stream("POST", "/a", service=SERVICE, **options):
                pass
    assert fault_server.hits() == 0


async def test_the_options_aiohttp_accepts_still_go_through(fault_server: FaultServer) -> None:
    cookie = SimpleCookie()
    cookie["m"] = "n"
    async with client(document(fault_server.url)) as c:
        for cookies in ({"a": "b"}, [("a", "b")], cookie):
            response = await c.post(
                "/a", service=SERVICE, data=io.BytesIO(b"x"), cookies=cookies, ssl=False
            )
            assert response.status == 200
    assert [r.headers["Cookie"] for r in fault_server.requests] == ["a=b", "a=b", "m=n"]
    assert [r.body for r in fault_server.requests] == [b"x"] * 3


# -- a relative Location is resolved against the encoded path --------------------------


@pytest.mark.parametrize(
    ("start", "location", "landed", "path"),
    [
        ("/a%00b/c", "d", "/a%00b/d", "/a\x00b/d"),
        ("/files/a%2Fb/c", "d", "/files/a%2Fb/d", "/files/a/b/d"),
        ("/files/a%2Fb/c", "../d", "/files/d", "/files/d"),
    ],
    ids=["nul", "encoded-slash", "dot-dot"],
)
async def test_a_relative_location_keeps_the_encoding_of_the_path_it_is_resolved_against(
    fault_server: FaultServer, start: str, location: str, landed: str, path: str
) -> None:
    # Old code: yarl's URL.join decoded the base's directory: %00 became a NUL
    # in the request line (%0D%0A a raw CR LF alike), and aiohttp's ValueError
    # escaped the error tree; %2F became a "/" (another resource: /files/a/b/d).
    fault_server.script(unquote(start), moved(location))  # the server's paths are decoded
    async with client(document(fault_server.url)) as c:
        response = await c.get(start, service=SERVICE)
    assert response.status == 200
    assert response.url == f"{fault_server.url}{landed}"
    assert fault_server.requests[-1].path == path


async def test_the_middleware_refuses_a_hop_aiohttp_resolved_to_a_control_character(
    fault_server: FaultServer,
) -> None:
    # aiohttp follows the redirects on this path, with the same yarl URL.join:
    # old code let its ValueError ("Forbidden control character") out.
    fault_server.script("/a\x00b/c", moved("d"))
    async with (
        healkit.Client(plugins=[TimeoutPlugin()], entry_points=False),
        aiohttp.ClientSession(middlewares=[healkit.ResilienceMiddleware()]) as session,
    ):
        with pytest.raises(healkit.InvalidRequestError, match="a control character in its path"):
            await session.get(f"{fault_server.url}/a%00b/c")
    assert fault_server.hits() == 1


@pytest.mark.parametrize("requote", [True, False])
async def test_the_middleware_refuses_a_hop_aiohttp_resolved_against_the_decoded_path(
    fault_server: FaultServer, requote: bool
) -> None:
    # aiohttp resolves the relative Location itself, with yarl's URL.join, which
    # decodes the base path: old code sent the hop to /files/a/b/d, another
    # resource. The middleware cannot change the URL aiohttp sends; it refuses it.
    fault_server.script("/files/a/b/c", moved("d"))
    async with (
        healkit.Client(plugins=[TimeoutPlugin()], entry_points=False),
        aiohttp.ClientSession(
            middlewares=[healkit.ResilienceMiddleware()], requote_redirect_url=requote
        ) as session,
    ):
        with pytest.raises(
            healkit.RedirectRefusedError, match="against the decoded path"
        ) as caught:
            await session.get(f"{fault_server.url}/files/a%2Fb/c")
    assert caught.value.location == f"{fault_server.url}/files/a%2Fb/d"
    assert fault_server.hits() == 1


async def test_the_middleware_follows_a_relative_location_yarl_resolves_alike(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/files/a/c", moved("d?x=%2F"))
    async with (
        healkit.Client(plugins=[TimeoutPlugin()], entry_points=False),
        aiohttp.ClientSession(middlewares=[healkit.ResilienceMiddleware()]) as session,
        session.get(f"{fault_server.url}/files/a/c") as response,
    ):
        assert response.status == 200
    assert fault_server.requests[-1].path == "/files/a/d"
    assert len(fault_server.requests) == 2


# -- a request's max_redirects is bounded as the configuration's -----------------------


@pytest.mark.parametrize("most", [51, 10**9, -(10**5000)], ids=["51", "1e9", "-1e5000"])
async def test_a_request_may_not_ask_for_more_redirects_than_a_service_may(
    fault_server: FaultServer, most: int
) -> None:
    # Old code: max_redirects=10**9 let a redirect loop run until the attempt's
    # time limit (7,769 hops recorded on the attempt in 3 s on loopback), while
    # the configuration caps max_redirects at 50.
    fault_server.set_default(moved("/a"))
    async with client(document(fault_server.url)) as c:
        with pytest.raises(
            healkit.InvalidRequestError, match="max_redirects must be an int from 0 to 50"
        ):
            await c.get("/a", service=SERVICE, max_redirects=most)
    assert fault_server.hits() == 0


async def test_a_request_may_ask_for_the_most_redirects_a_service_may(
    fault_server: FaultServer,
) -> None:
    fault_server.set_default(moved("/a"))
    async with client(document(fault_server.url)) as c:
        with pytest.raises(healkit.TooManyRedirects):
            await c.get("/a", service=SERVICE, max_redirects=50)
    assert fault_server.hits() == 51


# -- max_body_bytes caps the decoded body ------------------------------------------------

MIB = 1024 * 1024
BOMB = gzip.compress(b"\0" * (8 * MIB))  # about 8 KiB on the wire


def capped(primary: str, limit: int) -> dict[str, Any]:
    return {"services": {SERVICE: {"endpoints": [primary], "max_body_bytes": limit}}}


def gzipped(body: bytes) -> Fault:
    return Fault.status(200, body=body, headers={"Content-Encoding": "gzip"})


async def test_a_gzip_body_that_decodes_past_max_body_bytes_is_too_large(
    fault_server: FaultServer,
) -> None:
    # Old code: the declared Content-Length (8 KiB, the encoded size) was under
    # the cap, so the body was read whole, decoded: 8 MiB in memory for a 1 MiB
    # cap (a 1 MiB gzip of zeros decodes to 1 GiB).
    fault_server.set_default(gzipped(BOMB))
    async with client(capped(fault_server.url, MIB)) as c:
        with pytest.raises(healkit.BodyTooLargeError):
            await c.get("/a", service=SERVICE)


async def test_a_gzip_body_within_max_body_bytes_is_decoded(fault_server: FaultServer) -> None:
    payload = b'{"ok": true}' * 1000
    fault_server.set_default(gzipped(gzip.compress(payload)))
    async with client(capped(fault_server.url, len(payload))) as c:
        response = await c.get("/a", service=SERVICE)
    assert response.body == payload


async def test_httpx_caps_the_decoded_body_too(fault_server: FaultServer) -> None:
    fault_server.set_default(gzipped(BOMB))
    async with client(capped(fault_server.url, MIB)) as c:
        transport = healkit.httpx.ResilientTransport(runtime=c.runtime)
        async with httpx.AsyncClient(transport=transport) as hx:
            # Old code: the 8 KiB as sent passed the cap; .content decoded 8 MiB.
            with pytest.raises(healkit.BodyTooLargeError):
                await hx.get(f"{fault_server.url}/a")
