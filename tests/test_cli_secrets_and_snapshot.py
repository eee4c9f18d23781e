"""Three incidents of the configuration plane, against a real etcd and the real CLI.

- secrets in what ``healkit config ...`` prints, and a redacted document pushed back;
- ``http://`` to an etcd that serves TLS only;
- a tampered or hostile snapshot file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import msgspec
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

import healkit
from healkit import ConfigError, EtcdUnavailableError
from healkit._config.models import ConfigSection
from healkit._config.secrets import redact_document, redacted_paths, section_secrets
from healkit.etcd import EtcdClient, EtcdSource
from healkit.plugin import SECRET, secret_fields
from healkit.testing import EtcdServer, refused_url
from tests.cli_support import cli

DEADLINE = 30.0  # a ceiling against a hang on a loaded machine, not a timing under test
ROOT = "/healkit/test/"
SNAPSHOT_MAX_BYTES = 256 * 1024 * 1024  # as docs/etcd.md says


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("healkit: "), err
    return lines[0]


@pytest.fixture(scope="module")
def tls_etcd() -> Iterator[EtcdServer]:
    server = EtcdServer(tls=True)
    anyio.run(server.__aenter__)
    try:
        yield server
    finally:
        anyio.run(server.__aexit__, None, None, None)


# -- http:// to an etcd that serves TLS only ------------------------------------------------


def test_http_to_a_tls_etcd_says_it_may_expect_tls_in_one_line(
    tls_etcd: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = tls_etcd.url.replace("https://", "http://")
    for argv in (["status"], ["config", "get"]):
        run = cli(capsys, *argv, "--endpoints", url, "--connect-timeout", "2")
        assert run.status != 0
        line = one_line(run.err)
        assert "Server disconnected" not in line
        assert "closed the connection without answering" in line
        assert "use https://" in line


def test_http_to_a_tls_etcd_is_an_unavailable_error_that_says_why(tls_etcd: EtcdServer) -> None:
    url = tls_etcd.url.replace("https://", "http://")

    async def read() -> None:
        async with EtcdClient(url, connect_timeout=2.0) as client:
            await client.range_all(ROOT, prefix=True)

    with pytest.raises(EtcdUnavailableError) as raised:
        asyncio.run(read())
    assert "expect TLS? then use https://" in str(raised.value)
    assert raised.value.failures[0][0] == url
    assert "Server disconnected" not in str(raised.value)


# -- the snapshot file ----------------------------------------------------------------------


def service(endpoint: str, **more: object) -> str:
    return json.dumps({"endpoints": [endpoint], **more})


def snapshot_text(documents: str, *, root: str = f'"{ROOT}"', revision: str = "7") -> str:
    """A snapshot file's text, written by hand: ``documents`` is the JSON of its object."""
    return (
        f'{{"version":2,"root":{root},"cluster_id":1,"revision":{revision},'
        f'"documents":{documents}}}'
    )


@contextlib.asynccontextmanager
async def started_from(
    snapshot: Path, **options: Any
) -> AsyncIterator[tuple[healkit.Runtime, EtcdSource]]:
    """Start a runtime of namespace ``test`` from ``snapshot``: its etcd refuses connections."""
    async with EtcdClient(refused_url(), timeout=1.0, connect_timeout=0.5) as client:
        source = EtcdSource(client, namespace="test", snapshot_path=snapshot, **options)
        runtime = healkit.Runtime(config=source, entry_points=False)
        with anyio.fail_after(DEADLINE):
            await runtime.__aenter__()
        try:
            yield runtime, source
        finally:
            await runtime.__aexit__(None, None, None)


def refusal(snapshot: Path) -> ConfigError:
    """Start from ``snapshot``, which must be refused; return the error."""

    async def start() -> None:
        async with started_from(snapshot):
            pass

    with pytest.raises(ConfigError) as raised:
        anyio.run(start)
    assert raised.value.origin == str(snapshot)
    return raised.value


def test_a_snapshot_repeating_a_document_key_is_refused_naming_it(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.json"
    a, evil = json.dumps(service("http://a.test")), json.dumps(service("http://evil.test"))
    snapshot.write_text(snapshot_text(f'{{"services/a":{a},"services/a":{evil}}}'))
    error = refusal(snapshot)
    assert error.issues[0].path == '$.documents["services/a"]'
    assert "repeats the key 'services/a'" in error.issues[0].reason


@pytest.mark.parametrize("key", ["root", "revision"])
def test_a_snapshot_repeating_a_field_is_refused_naming_it(tmp_path: Path, key: str) -> None:
    snapshot = tmp_path / "snap.json"
    a = json.dumps(service("http://a.test"))
    text = snapshot_text(f'{{"services/a":{a}}}')
    first = {"root": '"root":"/healkit/other/",', "revision": '"revision":99,'}[key]
    snapshot.write_text(text.replace('"version":2,', '"version":2,' + first))
    error = refusal(snapshot)
    assert error.issues[0].path == f"$.{key}"
    assert f"repeats the key {key!r}" in error.issues[0].reason


def test_a_snapshot_linked_to_dev_zero_is_refused_unread(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.json"
    snapshot.symlink_to("/dev/zero")
    assert "not a regular file" in refusal(snapshot).issues[0].reason


def test_a_snapshot_that_is_a_fifo_is_refused_without_waiting_for_a_writer(
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "snap.json"
    os.mkfifo(snapshot)
    try:
        assert "not a regular file" in refusal(snapshot).issues[0].reason
    finally:
        # Should a reader be blocked in open() (the old code), a writer frees it.
        with contextlib.suppress(OSError):
            os.close(os.open(snapshot, os.O_WRONLY | os.O_NONBLOCK))


def test_a_snapshot_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.json"
    with snapshot.open("wb") as file:
        file.truncate(SNAPSHOT_MAX_BYTES + 1)  # sparse: nothing written to the disk
    reason = refusal(snapshot).issues[0].reason
    assert f"over {SNAPSHOT_MAX_BYTES:,}" in reason


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("truncated", snapshot_text('{"services/a":"{}"}')[:-9]),
        ("NaN revision", snapshot_text('{"services/a":"{}"}', revision="NaN")),
        ("1e999 revision", snapshot_text('{"services/a":"{}"}', revision="1e999")),
        ("not an object", "[]"),
        ("a document that is not text", snapshot_text('{"services/a":{"endpoints":[]}}')),
    ],
)
def test_a_snapshot_that_is_not_a_snapshot_is_refused(tmp_path: Path, name: str, text: str) -> None:
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(text)
    assert "cannot read the etcd snapshot" in refusal(snapshot).issues[0].reason, name


def test_a_snapshot_with_invalid_documents_starts_with_the_valid_ones_only(
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "snap.json"
    documents = {
        "services/good": service("http://good.test"),
        "services/scheme": service("ftp://bad.test"),
        "services/infinite": service("http://inf.test", max_body_bytes=1e999),
        "services/nan": '{"endpoints": ["http://nan.test"], "max_body_bytes": NaN}',
        "services/large": service("http://large.test", padding="x" * 2000),
    }
    snapshot.write_text(snapshot_text(json.dumps(documents)))

    async def start() -> None:
        limits = healkit.DocumentLimits(max_bytes=1000)
        async with started_from(snapshot, limits=limits) as (runtime, source):
            assert set(runtime.config.services) == {"good"}
            assert source.status.from_snapshot is True
            assert set(source.status.rejected) == {
                "services/scheme",
                "services/infinite",
                "services/nan",
                "services/large",
            }

    anyio.run(start)


# -- secrets in what the CLI prints -----------------------------------------------------------


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer()
    anyio.run(server.__aenter__)
    try:
        yield server
    finally:
        anyio.run(server.__aexit__, None, None, None)


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:100]


@pytest.fixture(scope="module")
def client_certs() -> tuple[trustme.LeafCert, trustme.LeafCert]:
    ca = trustme.CA()
    return ca.issue_cert("defaults.client.test"), ca.issue_cert("pay.client.test")


def tls_section(cert: trustme.LeafCert) -> dict[str, str]:
    return {
        "cert_pem": cert.cert_chain_pems[0].bytes().decode(),
        "key_pem": cert.private_key_pem.bytes().decode(),
    }


def key_body(cert: trustme.LeafCert) -> str:
    """A line of the key's base64 body: what must never be printed."""
    return cert.private_key_pem.bytes().decode().splitlines()[1]


def where(etcd: EtcdServer, namespace: str) -> list[str]:
    return ["--endpoints", etcd.url, "--namespace", namespace]


def stored(etcd: EtcdServer, namespace: str) -> dict[str, bytes]:
    async def read() -> dict[str, bytes]:
        async with etcd.client() as client:
            result = await client.range_all(f"/healkit/{namespace}/", prefix=True)
        return {kv.key.decode(): kv.value for kv in result.kvs}

    return anyio.run(read)


@pytest.fixture
def secret_namespace(
    etcd: EtcdServer,
    namespace: str,
    client_certs: tuple[trustme.LeafCert, trustme.LeafCert],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> str:
    """A namespace whose defaults and service ``pay`` hold an inline private key, pushed."""
    defaults, pay = client_certs
    document = {
        "defaults": {"tls": tls_section(defaults)},
        "services": {
            "pay": {"endpoints": ["https://pay.test"], "tls": tls_section(pay)},
            "plain": {"endpoints": ["http://plain.test"]},
        },
    }
    source = tmp_path / "with-secrets.json"
    source.write_text(json.dumps(document))
    run = cli(capsys, "config", "push", str(source), *where(etcd, namespace))
    assert run.status == 0, run.err
    return namespace


def assert_no_key(text: str, certs: tuple[trustme.LeafCert, trustme.LeafCert]) -> None:
    for cert in certs:
        assert key_body(cert) not in text
    assert "PRIVATE KEY" not in text


@pytest.mark.parametrize("fmt", ["json", "yaml", "toml"])
def test_config_get_redacts_inline_keys_of_services_and_defaults(
    etcd: EtcdServer,
    secret_namespace: str,
    client_certs: tuple[trustme.LeafCert, trustme.LeafCert],
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    run = cli(capsys, "config", "get", "--format", fmt, *where(etcd, secret_namespace))
    assert run.status == 0, run.err
    assert_no_key(run.out, client_certs)
    assert run.out.count("[REDACTED]") == 2
    assert "BEGIN CERTIFICATE" in run.out  # only the secret is hidden
    if fmt == "json":
        document = json.loads(run.out)
        assert document["services"]["pay"]["tls"]["key_pem"] == "[REDACTED]"
        assert document["defaults"]["tls"]["key_pem"] == "[REDACTED]"
        assert document["services"]["plain"] == {"endpoints": ["http://plain.test"]}
    single = cli(capsys, "config", "get", "pay", *where(etcd, secret_namespace))
    assert single.status == 0, single.err
    assert json.loads(single.out)["tls"]["key_pem"] == "[REDACTED]"


def test_config_get_raw_prints_a_backup_that_pushes_back_unchanged(
    etcd: EtcdServer,
    secret_namespace: str,
    client_certs: tuple[trustme.LeafCert, trustme.LeafCert],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    run = cli(capsys, "config", "get", "--raw", *where(etcd, secret_namespace))
    assert run.status == 0, run.err
    assert all(key_body(cert) in run.out for cert in client_certs)
    backup = tmp_path / "backup.json"
    backup.write_text(run.out)
    again = cli(capsys, "config", "push", str(backup), *where(etcd, secret_namespace))
    assert again.status == 0, again.err
    assert again.out.startswith("nothing to push")


@pytest.mark.parametrize("command", ["push", "diff"])
def test_pushing_a_redacted_document_is_refused_naming_the_key(
    etcd: EtcdServer,
    secret_namespace: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: str,
) -> None:
    before = stored(etcd, secret_namespace)
    run = cli(capsys, "config", "get", *where(etcd, secret_namespace))
    document = json.loads(run.out)
    document["services"]["pay"]["endpoints"] = ["https://pay-2.test"]  # an operator's edit
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(document))
    refused = cli(capsys, "config", command, str(edited), *where(etcd, secret_namespace))
    assert refused.status == {"push": 1, "diff": 2}[command]  # diff: 2 is trouble
    line = one_line(refused.err)
    assert "$.defaults.tls.key_pem is '[REDACTED]'" in line
    assert "--raw" in line
    assert stored(etcd, secret_namespace) == before


def test_a_redacted_service_file_of_a_directory_is_refused_too(
    etcd: EtcdServer,
    secret_namespace: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    before = stored(etcd, secret_namespace)
    run = cli(capsys, "config", "get", "pay", *where(etcd, secret_namespace))
    (tmp_path / "pay.json").write_text(run.out)
    refused = cli(capsys, "config", "push", str(tmp_path), *where(etcd, secret_namespace))
    assert refused.status == 1
    assert "$.services.pay.tls.key_pem is '[REDACTED]'" in one_line(refused.err)
    assert stored(etcd, secret_namespace) == before


def test_history_diff_and_rollback_redact_unless_raw(
    etcd: EtcdServer,
    secret_namespace: str,
    client_certs: tuple[trustme.LeafCert, trustme.LeafCert],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    ns = where(etcd, secret_namespace)
    first = json.loads(cli(capsys, "config", "get", "--raw", *ns).out)
    first_revision = json.loads(cli(capsys, "config", "history", "pay", "--json", *ns).out)[
        "versions"
    ][0]["revision"]
    # The same key written another way (the traditional form to PKCS #8): only
    # the secret changes, the certificate stays.
    key = serialization.load_pem_private_key(client_certs[1].private_key_pem.bytes(), None)
    reencoded = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    assert reencoded != first["services"]["pay"]["tls"]["key_pem"]
    changed = json.loads(json.dumps(first))
    changed["services"]["pay"]["tls"]["key_pem"] = reencoded
    source = tmp_path / "swapped.json"
    source.write_text(json.dumps(changed))
    outputs = {
        "diff": cli(capsys, "config", "diff", str(source), *ns),
        "diff --json": cli(capsys, "config", "diff", "--json", str(source), *ns),
        "push --dry-run": cli(capsys, "config", "push", "--dry-run", str(source), *ns),
    }
    pushed = cli(capsys, "config", "push", str(source), *ns)
    assert pushed.status == 0, pushed.err
    outputs |= {
        "history": cli(capsys, "config", "history", "pay", *ns),
        "history --full": cli(capsys, "config", "history", "pay", "--full", *ns),
        "history --json": cli(capsys, "config", "history", "pay", "--json", *ns),
        "rollback --dry-run": cli(
            capsys, "config", "rollback", "pay", "--to", str(first_revision), "--dry-run", *ns
        ),
        "rollback --json --dry-run": cli(
            capsys,
            "config",
            "rollback",
            "pay",
            "--to",
            str(first_revision),
            "--dry-run",
            "--json",
            *ns,
        ),
    }
    for name, run in outputs.items():
        assert run.status in {0, 1}, (name, run.err)
        assert_no_key(run.out + run.err, client_certs)
    assert "only secret settings change" in outputs["diff"].out
    assert "[REDACTED]" in outputs["history --full"].out
    assert "only secret settings change" in outputs["rollback --dry-run"].out
    raw = cli(capsys, "config", "history", "pay", "--full", "--raw", *ns)
    assert key_body(client_certs[1]) in raw.out
    assert reencoded.splitlines()[1] in raw.out
    assert reencoded.splitlines()[1] not in "".join(run.out for run in outputs.values())


def test_status_shows_no_secret(
    etcd: EtcdServer,
    secret_namespace: str,
    client_certs: tuple[trustme.LeafCert, trustme.LeafCert],
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["status"], ["status", "--json"]):
        run = cli(capsys, *argv, *where(etcd, secret_namespace))
        assert run.status == 0, run.err
        assert_no_key(run.out + run.err, client_certs)


class _Upstream(msgspec.Struct, frozen=True):
    token: Annotated[str, SECRET] | None = None
    name: str = ""


class _VaultSettings(msgspec.Struct, frozen=True):
    password: Annotated[str, SECRET] = ""
    one: _Upstream | None = None
    many: tuple[_Upstream, ...] = ()
    named: dict[str, _Upstream] = {}


def test_secret_paths_follow_nested_structs_optionals_lists_and_mappings() -> None:
    assert secret_fields(_VaultSettings) == {"password"}
    secrets = section_secrets([ConfigSection("vault", _VaultSettings)])
    document = {
        "endpoints": ["http://a.test"],
        "vault": {
            "password": "p",
            "one": {"token": "t1", "name": "x"},
            "many": [{"token": "t2"}, {"name": "no token"}, {"token": None}],
            "named": {"a": {"token": "t3"}},
        },
    }
    original = json.loads(json.dumps(document))
    shown = redact_document(document, secrets)
    assert document == original  # a copy is redacted
    assert shown == {
        "endpoints": ["http://a.test"],
        "vault": {
            "password": "[REDACTED]",
            "one": {"token": "[REDACTED]", "name": "x"},
            "many": [{"token": "[REDACTED]"}, {"name": "no token"}, {"token": None}],
            "named": {"a": {"token": "[REDACTED]"}},
        },
    }
    assert sorted(redacted_paths(shown, secrets, "$.services.s")) == [
        "$.services.s.vault.many[0].token",
        "$.services.s.vault.named.a.token",
        "$.services.s.vault.one.token",
        "$.services.s.vault.password",
    ]
