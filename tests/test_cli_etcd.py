"""The etcd commands of the CLI (``healkit config push/get/diff/watch/history/rollback``,
``healkit status``) against a real etcd.

The commands run their own ``asyncio.run``, so these tests are synchronous: the
etcd servers are started and stopped with ``asyncio.run`` of their own (an
EtcdServer is a child process, not tied to a loop), and the tests read and
write etcd directly the same way. Each test works in a namespace of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import sys
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import yaml

from healkit._cli.documents import canonical_json, read_namespace
from healkit._cli.entry import main
from healkit._cli.push import PushConflictError, commit, plan_push
from healkit._cli.toml_writer import toml_dumps
from healkit._plugins import create_plugin_manager
from healkit._routing.fleet import EndpointView, InstanceView, ServiceView
from healkit._runtime import config_sections
from healkit.etcd import EtcdClient
from healkit.testing import EtcdServer, refused_url
from tests.cli_support import cli, connect

T = TypeVar("T")
DEADLINE = 20.0

PAYMENTS = {"endpoints": ["https://payments.internal:8443"], "retry": {"attempts": 3}}
INVENTORY = {"endpoints": ["http://inventory.internal:8080"]}
DEFAULTS = {"timeout": {"attempt": 5.0}}
DOCUMENT = {"defaults": DEFAULTS, "services": {"payments": PAYMENTS, "inventory": INVENTORY}}


# -- helpers ---------------------------------------------------------------------------


def start(server: EtcdServer) -> EtcdServer:
    asyncio.run(server.__aenter__())
    return server


def stop(server: EtcdServer) -> None:
    asyncio.run(server.__aexit__(None, None, None))


@contextlib.contextmanager
def running_etcd() -> Iterator[EtcdServer]:
    etcd = start(EtcdServer())
    try:
        yield etcd
    finally:
        stop(etcd)


@pytest.fixture(scope="module")
def server() -> Iterator[EtcdServer]:
    with running_etcd() as etcd:
        yield etcd


@pytest.fixture
def fresh_server() -> Iterator[EtcdServer]:
    """A server of the test's own, for what affects the whole server (compaction)."""
    with running_etcd() as etcd:
        yield etcd


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:100]


def etcd(server: EtcdServer, action: Callable[[EtcdClient], Awaitable[T]]) -> T:
    """Run ``action`` with a client of ``server`` on a loop of its own."""

    async def run() -> T:
        async with server.client() as client:
            return await action(client)

    return asyncio.run(run())


def put(server: EtcdServer, key: str, value: str | bytes) -> int:
    return etcd(server, lambda c: c.put(key, value)).revision


def value_of(server: EtcdServer, key: str) -> bytes | None:
    kv = etcd(server, lambda c: c.get(key))
    return None if kv is None else kv.value


def keys_under(server: EtcdServer, prefix: str) -> dict[str, bytes]:
    result = etcd(server, lambda c: c.range_all(prefix, prefix=True))
    return {kv.key.decode(): kv.value for kv in result.kvs}


def write(path: Path, data: Any) -> Path:
    suffix = path.suffix
    if suffix == ".json":
        path.write_text(json.dumps(data), encoding="utf-8")
    elif suffix in {".yaml", ".yml"}:
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
    else:
        path.write_text(toml_dumps(data), encoding="utf-8")
    return path


def root(namespace: str) -> str:
    return f"/healkit/{namespace}/"


def sections() -> Any:
    return config_sections(create_plugin_manager())


# -- push ----------------------------------------------------------------------------------


def test_push_a_file_writes_canonical_json_in_one_transaction(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path / "shop.toml", DOCUMENT)
    run = cli(capsys, "config", "push", str(source), *connect(server, namespace))
    assert run.status == 0, run.err
    stored = keys_under(server, root(namespace))
    assert stored == {
        root(namespace) + "defaults": canonical_json(DEFAULTS).encode(),
        root(namespace) + "services/inventory": canonical_json(INVENTORY).encode(),
        root(namespace) + "services/payments": canonical_json(PAYMENTS).encode(),
    }
    revisions = {
        kv.mod_revision
        for kv in etcd(server, lambda c: c.range_all(root(namespace), prefix=True)).kvs
    }
    assert len(revisions) == 1  # one transaction
    (revision,) = revisions
    assert f"pushed 3 keys to {root(namespace)} at revision {revision}" in run.out
    assert f"created {root(namespace)}services/payments" in run.out
    # Pushing the same document again writes nothing.
    again = cli(capsys, "config", "push", str(source), *connect(server, namespace))
    assert again.status == 0
    assert "nothing to push" in again.out
    assert etcd(server, lambda c: c.get(root(namespace) + "defaults")).mod_revision == revision  # type: ignore[union-attr]


def test_push_a_directory_of_one_file_per_service(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "defaults.yaml", DEFAULTS)
    write(tmp_path / "payments.toml", PAYMENTS)
    write(tmp_path / "inventory.json", INVENTORY)
    (tmp_path / "README.md").write_text("not a document\n", encoding="utf-8")
    run = cli(capsys, "config", "push", str(tmp_path), *connect(server, namespace))
    assert run.status == 0, run.err
    stored = keys_under(server, root(namespace))
    assert json.loads(stored[root(namespace) + "services/payments"]) == PAYMENTS
    assert json.loads(stored[root(namespace) + "services/inventory"]) == INVENTORY
    assert json.loads(stored[root(namespace) + "defaults"]) == DEFAULTS


def test_a_service_defined_twice_in_a_directory_is_refused(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "payments.toml", PAYMENTS)
    write(tmp_path / "payments.json", PAYMENTS)
    run = cli(capsys, "config", "push", str(tmp_path), *connect(server, namespace))
    assert run.status == 1
    assert "$.services.payments: both payments.json and payments.toml define it" in run.err
    assert keys_under(server, root(namespace)) == {}


def test_an_invalid_document_is_refused_and_nothing_is_written(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {
        "services": {
            "payments": {"endpoints": ["ftp://payments"], "retry": {"attempts": "many"}},
            "inventory": {**INVENTORY, "colour": "blue"},
        }
    }
    source = write(tmp_path / "bad.json", bad)
    run = cli(capsys, "config", "push", str(source), *connect(server, namespace))
    assert run.status == 1
    lines = run.err.splitlines()
    assert any("$.services.payments.endpoints[0]" in line for line in lines), run.err
    assert any("$.services.payments.retry.attempts" in line for line in lines), run.err
    assert any(line.startswith("  $.services.inventory: unknown key 'colour'") for line in lines)
    assert lines[0] == f"healkit: {source}: invalid (3 problems):"
    assert run.out == ""
    assert keys_under(server, root(namespace)) == {}


def test_a_push_that_would_leave_the_namespace_invalid_is_refused(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(server, root(namespace) + "services/legacy", json.dumps(INVENTORY))
    # Valid alone, but shares an endpoint with the service kept in etcd.
    source = write(tmp_path / "new.json", {"services": {"inventory": INVENTORY}})
    run = cli(capsys, "config", "push", str(source), *connect(server, namespace))
    assert run.status == 1
    assert "also an endpoint of service" in run.err
    assert "after the push" in run.err
    assert set(keys_under(server, root(namespace))) == {root(namespace) + "services/legacy"}


def test_a_concurrent_write_makes_the_push_fail_and_nothing_is_written(
    server: EtcdServer, namespace: str
) -> None:
    prefix = root(namespace)
    put(server, prefix + "services/payments", json.dumps(PAYMENTS))
    documents = {"services/payments": {**PAYMENTS, "max_body_bytes": 10}, "defaults": DEFAULTS}

    async def race(client: EtcdClient, concurrent: Callable[[], Awaitable[object]]) -> None:
        state = await read_namespace(client, prefix)
        plan = plan_push(state, documents, sections())
        await concurrent()  # another operator writes between our read and our commit
        with pytest.raises(PushConflictError, match="nothing was written"):
            await commit(client, plan)

    # A key the push read changed.
    etcd(
        server,
        lambda c: race(c, lambda: c.put(prefix + "services/payments", json.dumps(INVENTORY))),
    )
    assert value_of(server, prefix + "defaults") is None
    assert json.loads(value_of(server, prefix + "services/payments") or b"") == INVENTORY
    # A service the push never saw was created.
    etcd(server, lambda c: race(c, lambda: c.put(prefix + "services/other", json.dumps(INVENTORY))))
    assert value_of(server, prefix + "defaults") is None
    # A key the push creates was created by someone else first.
    etcd(server, lambda c: race(c, lambda: c.put(prefix + "defaults", b"{}")))
    assert value_of(server, prefix + "defaults") == b"{}"
    # A service the push keeps was deleted.
    etcd(server, lambda c: race(c, lambda: c.delete(prefix + "services/other")))
    assert value_of(server, prefix + "defaults") == b"{}"


def test_dry_run_prints_a_diff_and_writes_nothing(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = root(namespace) + "services/payments"
    revision = put(server, key, canonical_json(PAYMENTS))
    changed = {"services": {"payments": {**PAYMENTS, "retry": {"attempts": 5}}}}
    source = write(tmp_path / "shop.yaml", changed)
    run = cli(capsys, "config", "push", str(source), "--dry-run", *connect(server, namespace))
    assert run.status == 0, run.err
    assert f"--- etcd:{key}@{revision}" in run.out
    assert f"+++ new:{key}" in run.out
    assert '-    "attempts": 3' in run.out
    assert '+    "attempts": 5' in run.out
    assert "dry run: 1 key would change; nothing written" in run.out
    assert etcd(server, lambda c: c.get(key)).mod_revision == revision  # type: ignore[union-attr]


def test_services_absent_from_the_document_are_kept_unless_pruned(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = root(namespace)
    put(server, prefix + "services/old", json.dumps({"endpoints": ["http://old.internal"]}))
    source = write(tmp_path / "shop.json", {"services": {"payments": PAYMENTS}})
    run = cli(capsys, "config", "push", str(source), *connect(server, namespace))
    assert run.status == 0, run.err
    assert f"{prefix}services/old is in etcd but not in the document: kept" in run.err
    assert set(keys_under(server, prefix)) == {
        prefix + "services/old",
        prefix + "services/payments",
    }

    diff = cli(capsys, "config", "diff", str(source), "--prune", *connect(server, namespace))
    assert diff.status == 1
    assert f"--- etcd:{prefix}services/old@" in diff.out
    assert "+++ /dev/null" in diff.out

    run = cli(capsys, "config", "push", str(source), "--prune", *connect(server, namespace))
    assert run.status == 0, run.err
    assert f"deleted {prefix}services/old" in run.out
    assert set(keys_under(server, prefix)) == {prefix + "services/payments"}


def test_push_refuses_parts_of_a_document_that_etcd_has_no_key_for(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = {**DOCUMENT, "logging": {"redact_headers": ["X-Api-Key"]}}
    source = write(tmp_path / "shop.json", document)
    run = cli(capsys, "config", "push", str(source), *connect(server, namespace))
    assert run.status == 1
    assert "$.logging: etcd's layout has no key for this part of the document" in run.err
    assert keys_under(server, root(namespace)) == {}


# -- get and diff ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "yaml", "toml"])
def test_get_prints_the_whole_document_in_each_format(
    server: EtcdServer,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    source = write(tmp_path / "shop.json", DOCUMENT)
    assert cli(capsys, "config", "push", str(source), *connect(server, namespace)).status == 0
    run = cli(capsys, "config", "get", "--format", fmt, *connect(server, namespace))
    assert run.status == 0, run.err
    decoders: dict[str, Callable[[str], Any]] = {
        "json": json.loads,
        "yaml": yaml.safe_load,
        "toml": tomllib.loads,
    }
    decode = decoders[fmt]
    assert decode(run.out) == DOCUMENT


def test_get_prints_one_service_and_json_by_default(
    server: EtcdServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    put(server, root(namespace) + "services/payments", "endpoints: [https://p.internal]\n")
    run = cli(capsys, "config", "get", "payments", *connect(server, namespace))
    assert run.status == 0, run.err
    assert json.loads(run.out) == {"endpoints": ["https://p.internal"]}
    assert run.out.startswith("{\n  ")  # pretty
    missing = cli(capsys, "config", "get", "nobody", *connect(server, namespace))
    assert missing.status == 1
    assert missing.err == (
        f"healkit: no document for service 'nobody' at {root(namespace)}services/nobody\n"
    )


def test_get_as_toml_says_when_a_document_holds_a_null(
    server: EtcdServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    put(server, root(namespace) + "services/payments", '{"degraded": null}')
    run = cli(capsys, "config", "get", "payments", "--format", "toml", *connect(server, namespace))
    assert run.status == 1
    assert "TOML has no null: degraded is null" in run.err


def test_diff_exit_status_is_like_diffs(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path / "shop.json", DOCUMENT)
    different = cli(capsys, "config", "diff", str(source), *connect(server, namespace))
    assert different.status == 1
    assert f"+++ new:{root(namespace)}services/payments" in different.out
    assert keys_under(server, root(namespace)) == {}
    assert cli(capsys, "config", "push", str(source), *connect(server, namespace)).status == 0
    same = cli(capsys, "config", "diff", str(source), *connect(server, namespace))
    assert (same.status, same.out) == (0, "")
    invalid = write(tmp_path / "bad.json", {"services": {"x": {"endpoints": "nope"}}})
    trouble = cli(capsys, "config", "diff", str(invalid), *connect(server, namespace))
    assert trouble.status == 2
    assert "$.services.x.endpoints" in trouble.err


# -- history and rollback ---------------------------------------------------------------------


def versions(count: int) -> list[dict[str, Any]]:
    return [{**PAYMENTS, "retry": {"attempts": n}} for n in range(1, count + 1)]


def test_history_lists_every_version_newest_first(
    server: EtcdServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = root(namespace) + "services/payments"
    revisions = [put(server, key, canonical_json(doc)) for doc in versions(3)]
    run = cli(capsys, "config", "history", "payments", *connect(server, namespace))
    assert run.status == 0, run.err
    lines = run.out.splitlines()
    assert lines[0] == f"{key} (newest first):"
    for line, revision, version in zip(lines[1:4], reversed(revisions), (3, 2, 1), strict=True):
        assert line.startswith(f"revision {revision}  version {version}  {{")
        assert f'"attempts":{version}' in line
    assert lines[4] == f"history ends: created at revision {revisions[0]}"

    full = cli(capsys, "config", "history", "payments", "--full", *connect(server, namespace))
    assert full.status == 0
    assert f"revision {revisions[1]}  version 2:\n" in full.out
    assert '        "attempts": 2\n' in full.out

    missing = cli(capsys, "config", "history", "nobody", *connect(server, namespace))
    assert missing.status == 1
    assert "no document for service 'nobody'" in missing.err


def test_history_says_where_compaction_cut_it(
    fresh_server: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "/healkit/default/services/payments"
    revisions = [put(fresh_server, key, canonical_json(doc)) for doc in versions(4)]
    asyncio.run(fresh_server.compact(revisions[2]))
    run = cli(capsys, "config", "history", "payments", "--endpoints", fresh_server.url)
    assert run.status == 0, run.err
    lines = run.out.splitlines()
    assert [line.split("  ")[0] for line in lines[1:3]] == [
        f"revision {revisions[3]}",
        f"revision {revisions[2]}",
    ]
    assert lines[3] == (
        f"history ends: compacted at revision {revisions[2]} (older versions are gone)"
    )
    rollback = cli(
        capsys,
        "config",
        "rollback",
        "payments",
        "--to",
        str(revisions[0]),
        "--endpoints",
        fresh_server.url,
    )
    assert rollback.status == 1
    assert f"revision {revisions[0]} of {key} was compacted away" in rollback.err


def test_rollback_writes_back_an_older_document(
    server: EtcdServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = root(namespace) + "services/payments"
    first, second = versions(2)
    at_first = put(server, key, canonical_json(first))
    at_second = put(server, key, canonical_json(second))

    dry = cli(
        capsys, "config", "rollback", "payments", "--to", str(at_first), "--dry-run",
        *connect(server, namespace),
    )  # fmt: skip
    assert dry.status == 0, dry.err
    assert '-    "attempts": 2' in dry.out
    assert '+    "attempts": 1' in dry.out
    assert etcd(server, lambda c: c.get(key)).mod_revision == at_second  # type: ignore[union-attr]

    run = cli(
        capsys, "config", "rollback", "payments", "--to", str(at_first), *connect(server, namespace)
    )
    assert run.status == 0, run.err
    assert json.loads(value_of(server, key) or b"") == first
    assert f"rolled back {key} to its document of revision {at_first}" in run.out

    again = cli(
        capsys, "config", "rollback", "payments", "--to", str(at_first), *connect(server, namespace)
    )
    assert again.status == 0
    assert "already holds" in again.out


def test_rollback_to_an_invalid_document_is_refused(
    server: EtcdServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = root(namespace) + "services/payments"
    broken = put(server, key, '{"endpoints": ["ftp://nope"]}')
    good = put(server, key, canonical_json(PAYMENTS))
    run = cli(
        capsys, "config", "rollback", "payments", "--to", str(broken), *connect(server, namespace)
    )
    assert run.status == 1
    assert "$.services.payments.endpoints[0]" in run.err
    assert etcd(server, lambda c: c.get(key)).mod_revision == good  # type: ignore[union-attr]
    before = cli(
        capsys, "config", "rollback", "payments", "--to", str(broken - 1),
        *connect(server, namespace),
    )  # fmt: skip
    assert before.status == 1
    assert f"{key} did not exist at revision {broken - 1}" in before.err


# -- watch -------------------------------------------------------------------------------------


class Lines(io.StringIO):
    """A stdout that lets a test wait for a line from another thread."""

    def __init__(self) -> None:
        super().__init__()
        self._condition = threading.Condition()

    def write(self, text: str) -> int:
        with self._condition:
            written = super().write(text)
            self._condition.notify_all()
            return written

    def wait_for(self, fragment: str) -> None:
        with self._condition:
            found = self._condition.wait_for(lambda: fragment in self.getvalue(), DEADLINE)
        assert found, f"no {fragment!r} in {self.getvalue()!r}"


def test_watch_prints_applied_revisions_and_rejections(
    server: EtcdServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = root(namespace)
    put(server, prefix + "services/payments", canonical_json(PAYMENTS))
    out = Lines()
    monkeypatch.setattr(sys, "stdout", out)
    statuses: list[int] = []
    argv = ["config", "watch", "--count", "3", "--timeout", str(DEADLINE)]
    thread = threading.Thread(
        target=lambda: statuses.append(main([*argv, *connect(server, namespace)]))
    )
    thread.start()
    try:
        out.wait_for("watching")
        changed = put(server, prefix + "services/inventory", canonical_json(INVENTORY))
        out.wait_for(f"revision {changed}:")
        rejected = put(server, prefix + "services/payments", '{"endpoints": ["ftp://bad"]}')
        out.wait_for(f"revision {rejected}:")
        undecodable = put(server, prefix + "defaults", "{not json")
    finally:
        thread.join(DEADLINE)
    assert statuses == [0]
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert lines[0] == f"watching {prefix} from revision {changed - 1}: valid"
    assert lines[1] == f"revision {changed}: applied services/inventory (created)"
    assert lines[2].startswith(
        f"revision {rejected}: rejected {prefix}services/payments: "
        "$.services.payments.endpoints[0]: "
    )
    assert lines[3].startswith(f"revision {undecodable}: rejected {prefix}defaults: $: ")
    assert "invalid JSON" in lines[3]


def test_watch_stops_after_its_timeout(
    server: EtcdServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "config", "watch", "--timeout", "0.05", *connect(server, namespace))
    assert run.status == 0
    assert (
        run.out == f"watching {root(namespace)} from revision {run.out.split()[-2][:-1]}: valid\n"
    )
    assert "stopped after 0.05 s" in run.err


# -- status ------------------------------------------------------------------------------------


def test_status_shows_etcd_and_every_document_checked(
    server: EtcdServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = root(namespace)
    good = put(server, prefix + "services/payments", canonical_json(PAYMENTS))
    run = cli(capsys, "status", *connect(server, namespace))
    assert run.status == 0, run.err
    assert re.match(
        rf"etcd {re.escape(server.url)}: version 3\.\d+\.\d+, revision \d+, leader ", run.out
    )
    assert f"namespace {namespace} ({prefix})" in run.out
    assert re.search(rf"services/payments +revision {good} +valid", run.out)

    bad = put(server, prefix + "services/broken", '{"endpoints": ["ftp://nope"]}')
    overlay = put(
        server, prefix + "channels/canary/services/payments", '{"retry": {"attempts": -1}}'
    )
    run = cli(capsys, "status", *connect(server, namespace))
    assert run.status == 1
    assert re.search(rf"services/broken +revision {bad} +INVALID", run.out)
    assert "$.services.broken.endpoints[0]" in run.out
    assert re.search(rf"channels/canary/services/payments +revision {overlay} +INVALID", run.out)

    as_json = cli(capsys, "status", "--json", *connect(server, namespace))
    assert as_json.status == 1
    report = json.loads(as_json.out)
    assert report["etcd"]["endpoint"] == server.url
    assert report["etcd"]["revision"] >= overlay
    assert report["namespace"] == namespace
    assert report["valid"] is False
    documents = {d["key"]: d for d in report["documents"]}
    assert documents[prefix + "services/payments"]["valid"] is True
    assert documents[prefix + "services/payments"]["mod_revision"] == good
    assert documents[prefix + "services/broken"]["valid"] is False
    assert documents[prefix + "services/broken"]["issues"][0]["path"] == (
        "$.services.broken.endpoints[0]"
    )
    assert documents[prefix + "channels/canary/services/payments"]["channel"] == "canary"


# -- connection options, TLS, auth, errors -----------------------------------------------------


def test_connection_options_come_from_the_environment(
    server: EtcdServer,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEALKIT_ETCD_ENDPOINTS", f"{refused_url()},{server.url}")
    monkeypatch.setenv("HEALKIT_NAMESPACE", namespace)
    monkeypatch.setenv("HEALKIT_ETCD_PREFIX", "/elsewhere/")
    source = write(tmp_path / "shop.json", DOCUMENT)
    run = cli(capsys, "config", "push", str(source))
    assert run.status == 0, run.err
    assert set(keys_under(server, f"/elsewhere/{namespace}/")) == {
        f"/elsewhere/{namespace}/defaults",
        f"/elsewhere/{namespace}/services/inventory",
        f"/elsewhere/{namespace}/services/payments",
    }
    # A flag wins over its variable.
    other = cli(capsys, "config", "get", "--namespace", "nothing-here")
    assert (other.status, json.loads(other.out)) == (0, {"services": {}})


def test_tls_with_a_client_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = start(EtcdServer(tls=True, client_cert_auth=True))
    try:
        monkeypatch.setenv("HEALKIT_ETCD_ENDPOINTS", tls.url)
        monkeypatch.setenv("HEALKIT_ETCD_CA_FILE", str(tls.ca_file))
        monkeypatch.setenv("HEALKIT_ETCD_CERT_FILE", str(tls.client_cert_file))
        monkeypatch.setenv("HEALKIT_ETCD_KEY_FILE", str(tls.client_key_file))
        source = write(tmp_path / "shop.json", DOCUMENT)
        assert cli(capsys, "config", "push", str(source)).status == 0
        run = cli(capsys, "status")
        assert run.status == 0, run.err
        assert "services/payments" in run.out
        monkeypatch.delenv("HEALKIT_ETCD_CERT_FILE")
        monkeypatch.delenv("HEALKIT_ETCD_KEY_FILE")
        refused = cli(capsys, "status", "--connect-timeout", "2", "--request-timeout", "2")
        assert refused.status == 1
        assert refused.err.startswith("healkit: EtcdUnavailableError: ")
        assert len(refused.err.splitlines()) == 1
    finally:
        stop(tls)


def test_auth_through_the_environment_never_shows_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cret-Pa55word-for-the-test"  # noqa: S105 - a throwaway etcd's password
    auth = start(EtcdServer(auth=True, password=secret))
    try:
        monkeypatch.setenv("HEALKIT_ETCD_ENDPOINTS", auth.url)
        monkeypatch.setenv("HEALKIT_ETCD_USER", "root")
        monkeypatch.setenv("HEALKIT_ETCD_PASSWORD", secret)
        source = write(tmp_path / "shop.json", DOCUMENT)
        runs = [
            cli(capsys, "config", "push", str(source)),
            cli(capsys, "config", "get"),
            cli(capsys, "status", "--json"),
        ]
        assert [run.status for run in runs] == [0, 0, 0], [run.err for run in runs]
        assert json.loads(runs[1].out) == DOCUMENT
        # The password from a file, and a wrong one.
        monkeypatch.delenv("HEALKIT_ETCD_PASSWORD")
        password_file = tmp_path / "password"
        password_file.write_text(secret + "\n", encoding="utf-8")
        runs.append(cli(capsys, "config", "get", "--password-file", str(password_file)))
        assert runs[-1].status == 0, runs[-1].err
        password_file.write_text("wrong-" + secret, encoding="utf-8")
        wrong = cli(capsys, "status", "--password-file", str(password_file))
        assert wrong.status == 1
        assert wrong.err.startswith("healkit: EtcdAuthError: ")
        assert "root" in wrong.err
        runs.append(wrong)
        for run in runs:
            assert secret not in run.out
            assert secret not in run.err
        # No password and no terminal to ask on: a usage error.
        monkeypatch.setattr(sys, "stdin", io.StringIO())
        missing = cli(capsys, "status")
        assert missing.status == 2
        assert "needs a password: set $HEALKIT_ETCD_PASSWORD" in missing.err
    finally:
        stop(auth)


def test_unreachable_etcd_is_one_clear_line_and_status_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoints = f"{refused_url()},{refused_url()}"
    for argv in (["status"], ["config", "get"], ["config", "history", "x"]):
        run = cli(capsys, *argv, "--endpoints", endpoints, "--connect-timeout", "0.5")
        assert run.status == 1
        assert run.out == ""
        assert run.err.startswith("healkit: EtcdUnavailableError: no etcd endpoint could serve")
        assert len(run.err.splitlines()) == 1


def test_usage_errors_exit_with_status_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HEALKIT_ETCD_ENDPOINTS", raising=False)
    no_endpoints = cli(capsys, "status")
    assert no_endpoints.status == 2
    assert "--endpoints or $HEALKIT_ETCD_ENDPOINTS" in no_endpoints.err
    bad_namespace = cli(capsys, "status", "--endpoints", "http://x", "--namespace", "a/b")
    assert bad_namespace.status == 2
    assert "invalid namespace" in bad_namespace.err
    no_revision = cli(capsys, "config", "rollback", "svc", "--endpoints", "http://x")
    assert no_revision.status == 2
    bad_endpoint = cli(capsys, "status", "--endpoints", "ftp://x")
    assert bad_endpoint.status == 2
    assert "invalid etcd endpoint 'ftp://x'" in bad_endpoint.err
    missing_ca = cli(capsys, "status", "--endpoints", "https://x", "--ca-file", "/nonexistent/ca")
    assert missing_ca.status == 2
    password_without_user = cli(capsys, "status", "--endpoints", "http://x", "--password", "pw")
    assert password_without_user.status == 2
    assert "a password needs a user" in password_without_user.err


def test_toml_output_reads_back() -> None:
    document = {
        "a key": 'quote " and \x7f and \n',
        "list": [1, 2.5, True, "x"],
        "inline": [{"k": 1}, 2],
        "tables": [{"x": 1}, {"x": 2, "sub": {"y": 3}}],
        "empty": {},
        "nested": {"deeper": {"value": -1e20}},
    }
    assert tomllib.loads(toml_dumps(document)) == document


def test_status_shows_fleet_health_and_where_traffic_goes(
    server: EtcdServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = root(namespace)
    primary, other, backup = "http://a.internal", "http://b.internal", "http://dr.internal"
    document = {
        "endpoints": [primary, other],
        "routing": {"fallback_groups": [[backup]], "fleet": {"quorum": 2}},
    }
    put(server, prefix + "services/payments", canonical_json(document))
    quoted = primary.replace(":", "%3A").replace("/", "%2F")
    put(server, f"{prefix}health/payments/{quoted}/host-1", "out")
    run = cli(capsys, "status", *connect(server, namespace))
    assert run.status == 0, run.err
    assert "service payments (quorum 2):" in run.out
    assert f"group 0  {primary}  reported out by host-1" in run.out
    assert f"traffic now: group 0: {primary}, {other}" in run.out  # one report < quorum 2

    put(server, f"{prefix}health/payments/{quoted}/host-2", "out")
    quoted_other = other.replace(":", "%3A").replace("/", "%2F")
    for instance in ("host-1", "host-2"):
        put(server, f"{prefix}health/payments/{quoted_other}/{instance}", "out")
    report = json.loads(cli(capsys, "status", "--json", *connect(server, namespace)).out)
    payments = report["fleet"]["payments"]
    assert payments["traffic"] == {"group": 1, "endpoints": [backup]}
    assert [e["reported_out_by"] for e in payments["endpoints"]] == [
        ["host-1", "host-2"],
        ["host-1", "host-2"],
        [],
    ]


def test_status_shows_each_instances_own_view(
    server: EtcdServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = root(namespace)
    primary, backup = "http://a.internal", "http://dr.internal"
    document = {"endpoints": [primary], "routing": {"fallback_groups": [[backup]], "fleet": {}}}
    put(server, prefix + "services/payments", canonical_json(document))
    now = time.time()
    endpoints = (
        EndpointView(
            endpoint=primary,
            group=0,
            usable=False,
            down=False,
            ejected_until=now + 42.4,
            fleet_reports=1,
            breaker="open",
            breaker_retry_at=now + 9.6,
        ),
        EndpointView(
            endpoint=backup,
            group=1,
            usable=True,
            down=False,
            ejected_until=None,
            fleet_reports=0,
            breaker="closed",
            breaker_retry_at=None,
        ),
    )
    view = InstanceView(
        instance="host-1",
        updated=now,
        services={"payments": ServiceView(endpoints=endpoints, traffic_group=1, traffic=(backup,))},
    )
    put(server, prefix + "instances/host-1", msgspec.json.encode(view).decode())
    put(server, prefix + "instances/intruder", "not a view")
    run = cli(capsys, "status", *connect(server, namespace))
    assert run.status == 0, run.err  # an unreadable view is reported, not a failure
    assert re.search(rf"instance host-1 \(as of \d+ s ago\): traffic to group 1: {backup}", run.out)
    assert re.search(
        rf"group 0  {primary}  ejected \(4\d s left\), "
        r"breaker open \(admits calls again in \d+ s\)",
        run.out,
    )
    assert f"group 1  {backup}  usable, breaker closed" in run.out
    assert "instance record instances/intruder unreadable" in run.out
    report = json.loads(cli(capsys, "status", "--json", *connect(server, namespace)).out)
    (seen,) = report["fleet"]["payments"]["instances"]
    assert seen["instance"] == "host-1"
    assert seen["traffic_group"] == 1
    assert [e["breaker"] for e in seen["endpoints"]] == ["open", "closed"]
    assert [r["key"] for r in report["unreadable_instance_records"]] == ["instances/intruder"]
