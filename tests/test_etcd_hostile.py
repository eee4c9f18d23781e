"""Hostile documents in etcd keys, against a real etcd: refused alone, decoded off the loop."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import pytest

import healkit
from healkit import DocumentLimits
from healkit._config.formats import parse_document
from healkit._config.models import build_config
from healkit.etcd import EtcdClient, EtcdSource, PutOp
from healkit.testing import EtcdServer, capture_events
from tests.test_hostile_documents import billion_laughs, calls_on_this_thread

pytestmark = pytest.mark.anyio

ROOT = "/healkit/test/"
DEADLINE = 10.0
MIB = 1024 * 1024


def doc(endpoint: str) -> bytes:
    return json.dumps({"endpoints": [endpoint]}).encode()


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with etcd_server.client() as client:
        yield client


async def test_the_billion_laughs_in_a_key_is_refused_alone_and_off_the_loop(
    etcd: EtcdClient,
) -> None:
    await etcd.put(ROOT + "services/a", doc("http://a.test"))
    source = EtcdSource(etcd, namespace="test")
    runtime = healkit.Runtime(config=source, entry_points=False)
    async with runtime:
        version = runtime.version
        bomb = billion_laughs(under="degraded.template.json").encode()
        with (
            capture_events() as logs,
            calls_on_this_thread(parse_document, build_config) as on_loop,
        ):
            # One revision: the bomb for a, a good document for b.
            result = await etcd.txn(
                success=[
                    PutOp(key=(ROOT + "services/a").encode(), value=bomb),
                    PutOp(key=(ROOT + "services/b").encode(), value=doc("http://b.test")),
                ]
            )
            with anyio.fail_after(DEADLINE):
                await runtime.wait_for_version(version + 1)
        assert on_loop == []
        assert runtime.config.policy("a").endpoints == ("http://a.test",)
        assert runtime.config.policy("b").endpoints == ("http://b.test",)
        assert source.status.rejected == {"services/a": result.revision}
        (rejected,) = [e for e in logs if e["event"] == "healkit.etcd_document_rejected"]
        assert rejected["key"] == ROOT + "services/a"
        assert rejected["path"] == "$"
        assert rejected["reason"] == "YAML aliases expand beyond 250,000 nodes (max_nodes)"


# The test's writer puts 1 MiB through EtcdClient.put; aiohttp warns about the
# size of that request body (the writer's side, not the source's).
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
async def test_a_document_just_under_the_size_limit_is_accepted_over_it_refused(
    etcd: EtcdClient,
) -> None:
    head = b"endpoints: [http://a.test]\n"
    just_under = head + b"#" * (MIB - len(head) - 1) + b"\n"  # a comment: bytes, no nodes
    assert len(just_under) == MIB
    source = EtcdSource(etcd, namespace="test")
    runtime = healkit.Runtime(config=source, entry_points=False)
    async with runtime:
        version = runtime.version
        await etcd.put(ROOT + "services/a", just_under)
        with anyio.fail_after(DEADLINE):
            await runtime.wait_for_version(version + 1)
        assert runtime.config.policy("a").endpoints == ("http://a.test",)
        with capture_events() as logs:
            put = await etcd.put(ROOT + "services/a", just_under.replace(b"a.test", b"aa.test"))
            with anyio.fail_after(DEADLINE):
                await source.wait_until(lambda status: status.applied_revision >= put.revision)
        assert runtime.config.policy("a").endpoints == ("http://a.test",)
        assert source.status.rejected == {"services/a": put.revision}
        (rejected,) = [e for e in logs if e["event"] == "healkit.etcd_document_rejected"]
        assert rejected["reason"] == (
            "the document is 1,048,577 bytes, over the limit of 1,048,576 bytes (max_bytes)"
        )


async def test_the_limits_are_the_sources_own(etcd: EtcdClient) -> None:
    await etcd.put(ROOT + "services/a", doc("http://a.test"))
    small = DocumentLimits(max_bytes=64, max_depth=4)
    source = EtcdSource(etcd, namespace="test", limits=small)
    runtime = healkit.Runtime(config=source, entry_points=False)
    async with runtime:
        with capture_events() as logs:
            deep = await etcd.put(ROOT + "services/a", b'{"endpoints": [[["http://a.test"]]]}')
            big_document = doc("http://b.test/" + "x" * 64)
            big = await etcd.put(ROOT + "services/b", big_document)
            with anyio.fail_after(DEADLINE):
                await source.wait_until(lambda status: status.applied_revision >= big.revision)
        assert source.status.rejected == {"services/a": deep.revision, "services/b": big.revision}
        reasons = [e["reason"] for e in logs if e["event"] == "healkit.etcd_document_rejected"]
        assert reasons == [
            "the document nests deeper than 4 levels (max_depth)",
            f"the document is {len(big_document)} bytes, over the limit of 64 bytes (max_bytes)",
        ]
        assert runtime.config.policy("a").endpoints == ("http://a.test",)
