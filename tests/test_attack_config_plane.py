"""The configuration plane attacked as an operator would, with the docs as the only guide.

Each test is a probe of issue 12's promises (docs/etcd.md, docs/configuration.md)
against a real etcd, real files, real loopback servers and the real command
line, that found a defect: an etcd endpoint that the client accepted and then
crashed on outside the error tree, a password echoed on stderr, IPv6 zone IDs
and hosts ending in a number accepted although no call could reach them as
written, a watch that resumed on another etcd cluster as if its history were
ours, a misnamed key under services/ that cost every key written with it (and
an instance its start), a never-ending watch message read in quadratic time,
and an instance that started with another configuration than the running ones
(new defaults, or the other of two services sharing an endpoint).
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from aiohttp import web

import healkit
from healkit.etcd import EtcdClient, EtcdSource, EtcdSourceStatus, PutOp
from healkit.testing import EtcdServer, FaultServer, TcpProxy, capture_events
from tests.cli_support import cli

pytestmark = pytest.mark.anyio

DEADLINE = 15.0


def document(*endpoints: str) -> bytes:
    return json.dumps({"endpoints": list(endpoints)}).encode()


async def until(source: EtcdSource, condition: Callable[[EtcdSourceStatus], bool]) -> None:
    with anyio.fail_after(DEADLINE):
        await source.wait_until(condition)


# -- etcd endpoints: one rule for every URL healkit calls ---------------------------------------

HOSTILE_ETCD_ENDPOINTS = [
    ("http://a..b:2379", 'invalid host "a..b": empty label'),
    ("http://%00:2379", "invalid host \"%00\": letters, digits, '-' and '_' only in each label"),
    ("http://a\x00b:2379", "invalid host \"a\\u0000b\": letters, digits, '-' and '_' only"),
    ("http://" + "a" * 64 + ".test:2379", "a label is longer than 63 characters"),
    ("http://127.0.0.1:0", "invalid port 0: must be 1 to 65535"),
    ("http://[fe80::1%25eth0]:2379", "an IPv6 zone ID is not supported"),
]


@pytest.mark.parametrize(("endpoint", "reason"), HOSTILE_ETCD_ENDPOINTS)
async def test_an_etcd_endpoint_is_held_to_the_host_rule_of_every_url(
    endpoint: str, reason: str
) -> None:
    # Before: accepted, and the first request raised a raw UnicodeError from
    # getaddrinfo (a..b), or connected to port 0, or resolved the zone as a name.
    with pytest.raises(ValueError, match="invalid etcd endpoint") as refused:
        EtcdClient(endpoint)
    assert reason in str(refused.value)
    assert type(refused.value) is ValueError


@pytest.mark.parametrize(("endpoint", "reason"), HOSTILE_ETCD_ENDPOINTS)
def test_the_command_line_refuses_the_same_endpoints_in_one_line(
    capsys: pytest.CaptureFixture[str], endpoint: str, reason: str
) -> None:
    # Before: `--endpoints http://a..b:2379` ended in a UnicodeError traceback.
    run = cli(capsys, "config", "get", "--endpoints", endpoint, "--namespace", "shop")
    assert run.status == 2
    assert run.out == ""
    assert run.err.startswith("healkit: argument --endpoints: invalid etcd endpoint ")
    assert reason in run.err
    assert run.err.count("\n") == 1


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://root:s3cret-pw@127.0.0.1:2379",
        "http://root:s3cret-pw@a..b:2379",
        "http://root:s3cret-pw@127.0.0.1:99999",
        "https://s3cret-pw@etcd-0:2379",
    ],
)
def test_a_password_in_an_endpoint_is_never_echoed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    # Before: stderr read "invalid etcd endpoint 'http://root:s3cret-pw@...'".
    flag = cli(capsys, "status", "--endpoints", endpoint)
    monkeypatch.setenv("HEALKIT_ETCD_ENDPOINTS", endpoint)
    env = cli(capsys, "config", "watch")
    for run in (flag, env):
        assert run.status == 2
        assert "s3cret-pw" not in run.err
        assert "***@" in run.err
    with pytest.raises(ValueError, match="invalid etcd endpoint") as refused:
        EtcdClient(endpoint)
    assert "s3cret-pw" not in str(refused.value)


@pytest.mark.parametrize("host", ["[fe80::1%25eth0]", "[fe80::1%eth0]", "[::1%25lo]"])
async def test_an_ipv6_zone_id_is_refused_in_a_document_and_in_a_call(host: str) -> None:
    # Before: accepted; a call to "%25eth0" (RFC 6874's form) failed to resolve
    # it as a name, and "%eth0" waited for a connection until the deadline.
    with pytest.raises(healkit.ConfigError) as refused:
        healkit.build_config(
            {"services": {"svc": {"endpoints": ["http://ok.test", f"http://{host}:8080"]}}}
        )
    [issue] = refused.value.issues
    assert issue.path == "$.services.svc.endpoints[1]"
    assert "an IPv6 zone ID is not supported" in issue.reason
    async with healkit.Client(entry_points=False) as client:
        with anyio.fail_after(DEADLINE), pytest.raises(healkit.InvalidRequestError) as call:
            await client.get(f"http://{host}:1/")
    assert "an IPv6 zone ID is not supported" in str(call.value)


@pytest.mark.parametrize("host", ["0x7f.1", "127.1", "2130706433", "256.1.1.1", "1.2.3.4.5"])
async def test_a_host_that_ends_in_a_number_but_is_no_ipv4_address_is_refused(
    fault_server: FaultServer, host: str
) -> None:
    # Before: accepted in a document; a call then failed (aiohttp refuses
    # "127.1" as "not a canonical IPv4 address") or, for "0x7f.1", went to
    # 127.0.0.1: the rule of the document was not the rule of the call.
    with pytest.raises(healkit.ConfigError) as refused:
        healkit.build_config({"services": {"svc": {"endpoints": [f"http://{host}"]}}})
    [issue] = refused.value.issues
    assert issue.path == "$.services.svc.endpoints[0]"
    assert issue.reason == f'invalid host "{host}": ends in a number but is not an IPv4 address'
    async with healkit.Client(entry_points=False) as client:
        with anyio.fail_after(DEADLINE), pytest.raises(healkit.InvalidRequestError):
            await client.get(f"http://{host}:{fault_server.port}/")
    assert fault_server.hits() == 0


# -- a watch never resumes on another cluster's history ----------------------------------------


async def test_a_watch_that_reconnects_to_another_cluster_reads_everything_again() -> None:
    namespace = "moved"
    root = f"/healkit/{namespace}/"
    async with (
        EtcdServer() as first,
        EtcdServer() as second,
        first.client() as at_first,
        second.client() as at_second,
        TcpProxy("127.0.0.1", first.port) as proxy,
        EtcdClient(proxy.url) as through_proxy,
    ):
        await at_first.put(root + "services/a", document("http://a.first.test"))
        # The other cluster holds other documents, at higher revisions than ours.
        await at_second.put(root + "services/b", document("http://b.second.test"))
        for _ in range(5):
            await at_second.put("/elsewhere", b"x")
        source = EtcdSource(through_proxy, namespace=namespace, random=lambda: 0.0)
        async with healkit.Runtime(config=source, entry_points=False) as runtime:
            assert set(runtime.config.services) == {"a"}
            with capture_events() as logs:
                # The endpoint now leads to another cluster (DNS moved, a
                # restore with bumped revisions): the watch breaks and resumes there.
                proxy.retarget("127.0.0.1", second.port)
                await proxy.cut()
                written = await at_second.put(root + "services/c", document("http://c.test"))
                await until(source, lambda s: s.applied_revision >= written.revision)
            # Before: {"a", "c"}, a mix of two clusters' documents.
            assert set(runtime.config.services) == {"b", "c"}
            assert source.status.connection == "connected"
        changed = [e for e in logs if e["event"] == "healkit.etcd_cluster_changed"]
        assert changed
        assert changed[0]["etcd_cluster"] != changed[0]["previous_cluster"]


# -- a key under services/ whose name is not a service name ------------------------------------

MISNAMED = ["a%2Fb", "..", "a\u200b", "", "payments/", "a/b", "caf\u00e9"]


@pytest.mark.parametrize("name", MISNAMED)
async def test_a_misnamed_key_is_rejected_alone_and_costs_no_key_written_with_it(
    etcd_server: EtcdServer, name: str
) -> None:
    root = "/healkit/names/"
    async with etcd_server.client() as etcd:
        await etcd.put(root + "services/seed", document("http://seed.test"))
        source = EtcdSource(etcd, namespace="names")
        async with healkit.Runtime(config=source, entry_points=False) as runtime:
            with capture_events() as logs:
                written = await etcd.txn(
                    success=[
                        PutOp(
                            key=f"{root}services/{name}".encode(), value=document("http://x.test")
                        ),
                        PutOp(key=f"{root}services/good".encode(), value=document("http://g.test")),
                    ]
                )
                await until(source, lambda s: s.applied_revision >= written.revision)
            # Before: "good" was rejected too (the issue lay at $.services, no
            # key's), and "payments/" or "a/b" were ignored without a word.
            assert set(runtime.config.services) == {"seed", "good"}
            assert source.status.rejected == {f"services/{name}": written.revision}
            [rejected] = _events(logs, "healkit.etcd_document_rejected")
            assert rejected["key"] == f"{root}services/{name}"
            assert rejected["path"] == "$.services"
            assert rejected["reason"].startswith("invalid key ")


async def test_an_instance_starts_with_every_valid_key_beside_misnamed_ones(
    etcd_server: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    root = "/healkit/start/"
    async with etcd_server.client() as etcd:
        await etcd.put(root + "services/good", document("http://g.test"))
        for name in MISNAMED:
            await etcd.put(f"{root}services/{name}", document("http://x.test"))
        source = EtcdSource(etcd, namespace="start")
        # Before: ConfigError "no valid document to start with", every key rejected.
        async with healkit.Runtime(config=source, entry_points=False) as runtime:
            assert set(runtime.config.services) == {"good"}
            assert set(source.status.rejected) == {f"services/{name}" for name in MISNAMED}
    run = await anyio.to_thread.run_sync(
        lambda: cli(capsys, "status", "--endpoints", etcd_server.url, "--namespace", "start")
    )
    assert run.status == 1
    # Each misnamed key is named as invalid; the valid one stays valid.
    assert run.err.startswith("healkit: /healkit/start/: invalid: ")
    for name in MISNAMED:
        assert f"services/{name}" in run.err
    assert "services/good" not in run.err
    assert "(the namespace as a whole)" not in run.err


# -- an instance that starts now applies what the running ones apply ---------------------------


async def test_defaults_that_break_every_service_cost_a_new_instance_no_service(
    etcd_server: EtcdServer,
) -> None:
    root = "/healkit/later/"
    bounded = json.dumps({"endpoints": ["http://a.test"], "routing": {"eject_time_max": 50}})
    async with etcd_server.client() as etcd:
        await etcd.put(root + "services/a", bounded)
        await etcd.put(root + "services/b", bounded.replace("a.test", "b.test"))
        running = EtcdSource(etcd, namespace="later")
        async with healkit.Runtime(config=running, entry_points=False) as first:
            # Valid alone, but every service's eject_time_max is below it: the
            # running instance rejects this write and keeps its services.
            breaking = await etcd.put(root + "defaults", b'{"routing": {"eject_time": 100}}')
            await until(running, lambda s: s.applied_revision >= breaking.revision)
            assert running.status.rejected == {"defaults": breaking.revision}
            assert set(first.config.services) == {"a", "b"}
            # An instance started now (a deploy, a restart) must run the same.
            starting = EtcdSource(etcd, namespace="later")
            async with healkit.Runtime(config=starting, entry_points=False) as second:
                # Before: it started with the new defaults and no service at all.
                assert set(second.config.services) == {"a", "b"}
                defaults = second.config.defaults.as_document()
                assert defaults == first.config.defaults.as_document()
                assert defaults["routing"]["eject_time"] == 30.0
                assert set(starting.status.rejected) == {"defaults"}


@pytest.mark.parametrize("first", ["zeta", "alpha"])
def test_of_two_services_sharing_an_endpoint_the_one_named_later_is_refused(first: str) -> None:
    second = "alpha" if first == "zeta" else "zeta"
    shared = {"endpoints": ["http://shared.test"]}
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.build_config({"services": {first: shared, second: shared}})
    assert [issue.path for issue in caught.value.issues] == [f"$.services.{second}.endpoints"]


def test_a_service_refused_for_a_shared_endpoint_claims_none_of_its_others() -> None:
    # c is refused (a named http://x first): its other endpoint is free for b,
    # as it was for an instance that refused c when it was written.
    document = {
        "services": {
            "a": {"endpoints": ["http://x.test"]},
            "c": {"endpoints": ["http://x.test", "http://y.test"]},
            "b": {"endpoints": ["http://y.test"]},
        }
    }
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.build_config(document)
    assert [issue.path for issue in caught.value.issues] == ["$.services.c.endpoints"]


async def test_two_services_sharing_an_endpoint_keep_the_first_written_at_every_start(
    etcd_server: EtcdServer,
) -> None:
    root = "/healkit/shared/"
    async with etcd_server.client() as etcd:
        await etcd.put(root + "services/zeta", document("http://shared.test"))
        running = EtcdSource(etcd, namespace="shared")
        async with healkit.Runtime(config=running, entry_points=False) as first:
            # "alpha" is written later with zeta's endpoint: rejected where zeta runs.
            later = await etcd.put(root + "services/alpha", document("http://shared.test"))
            await until(running, lambda s: s.applied_revision >= later.revision)
            assert set(first.config.services) == {"zeta"}
            starting = EtcdSource(etcd, namespace="shared")
            async with healkit.Runtime(config=starting, entry_points=False) as second:
                # Before: the new instance kept "alpha" (first in key order) and
                # rejected "zeta": a URL of shared.test meant another service there.
                assert set(second.config.services) == {"zeta"}
                assert set(starting.status.rejected) == {"services/alpha"}


async def test_defaults_written_after_a_service_invalid_on_its_own_stay_in_force(
    etcd_server: EtcdServer,
) -> None:
    root = "/healkit/own/"
    async with etcd_server.client() as etcd:
        await etcd.put(root + "services/good", document("http://g.test"))
        bad = json.dumps({"endpoints": ["http://b.test"], "routing": {"eject_after": "3"}})
        await etcd.put(root + "services/bad", bad)
        await etcd.put(root + "defaults", b'{"routing": {"eject_time": 5}}')
        source = EtcdSource(etcd, namespace="own")
        async with healkit.Runtime(config=source, entry_points=False) as runtime:
            # The service is blamed, not the defaults written after it.
            assert set(runtime.config.services) == {"good"}
            assert set(source.status.rejected) == {"services/bad"}
            assert runtime.config.defaults.as_document()["routing"]["eject_time"] == 5.0


# -- a server that only looks like etcd ----------------------------------------------------------


def _header(revision: int) -> dict[str, str]:
    return {"cluster_id": "4660", "member_id": "5", "revision": str(revision), "raft_term": "2"}


@contextlib.asynccontextmanager
async def endless_watch_server() -> AsyncIterator[str]:
    """An HTTP server that reads like etcd, but whose first watch message never ends.

    It comes in 4 KiB pieces, as a slow or hostile server sends it.
    """
    value = base64.b64encode(b'{"endpoints": ["http://a.test"]}').decode()
    key = base64.b64encode(b"/healkit/fake/services/a").decode()

    async def range_(_: web.Request) -> web.Response:
        kv = {"key": key, "value": value, "mod_revision": "3", "create_revision": "3"}
        return web.json_response({"header": _header(5), "kvs": [kv], "count": "1"})

    async def watch(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        created = {"result": {"header": _header(5), "created": True}}
        await response.write(json.dumps(created).encode() + b"\n")
        await response.write(
            b'{"result": {"header": {"revision": "6"}, "events": [{"kv": {"key": "'
        )
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(b"Q" * 4096)
        return response

    app = web.Application()
    app.router.add_post("/v3/kv/range", range_)
    app.router.add_post("/v3/watch", watch)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


async def test_a_watch_message_that_never_ends_is_refused_at_the_limit_in_linear_time() -> None:
    # Before: aiohttp's readline copied the message read so far for each piece:
    # 64 MiB in 4 KiB pieces took minutes of the event loop (in stalls that
    # starved every call) before the limit was even reached.
    async with endless_watch_server() as url, EtcdClient(url) as etcd:
        source = EtcdSource(etcd, namespace="fake", random=lambda: 1.0)
        async with healkit.Runtime(config=source, entry_points=False) as runtime:
            with anyio.fail_after(60):
                await source.wait_until(lambda s: s.connection == "unreachable")
            assert runtime.config.policy("a").endpoints == ("http://a.test",)
        assert source.status.last_error is not None
        assert "watch message from etcd at" in source.status.last_error
        assert f"exceeds {64 * 1024 * 1024} bytes" in source.status.last_error


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]
