"""Red-team findings against the configuration plane (issue 12), each a reproduction.

Huge integers: Python refuses to read a decimal integer of more than 4,300
digits (the conversion is quadratic), but YAML's and TOML's hexadecimal
literals, YAML 1.1's base 60 (``1:2:3``) and Python documents build such
integers anyway. Validation must still answer with a ConfigError, and a base-60
literal must not cost quadratic time to decode.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import pytest

import healkit
from healkit import ConfigError, build_config
from healkit._config.formats import parse_document
from healkit.etcd import EtcdSource
from healkit.testing import EtcdServer, FaultServer
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

DEADLINE = 10.0
HUGE = int("f" * 5000, 16)  # 6,021 decimal digits: more than Python will write
HEX = "0x" + "f" * 5000


def issues_of(document: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        build_config(document, healkit.Runtime(entry_points=False).sections)
    return [(issue.path, issue.reason) for issue in caught.value.issues]


def one_service(**settings: Any) -> dict[str, Any]:
    return {"services": {"svc": {"endpoints": ["http://svc.test"], **settings}}}


# -- an integer too long to write is still a ConfigError, at its path -----------------


@pytest.mark.parametrize(
    ("document", "path"),
    [
        (one_service(routing={"balance": HUGE}), "$.services.svc.routing.balance"),
        ({**one_service(), HUGE: 1}, "$"),
        ({"services": {HUGE: {"endpoints": ["http://svc.test"]}}}, "$.services"),
        ({"services": {"svc": {"endpoints": ["http://svc.test"], HUGE: 1}}}, "$.services.svc"),
    ],
    ids=["literal-field", "top-level-key", "service-name", "service-key"],
)
def test_an_integer_too_long_to_write_is_reported_not_raised(
    document: dict[Any, Any], path: str
) -> None:
    # Old code: ValueError "Exceeds the limit (4300 digits) for integer string
    # conversion" from repr() of the value or of the key, out of build_config.
    issues = issues_of(document)
    assert issues
    assert issues[0][0] == path
    assert "<an integer of 20,000 bits>" in issues[0][1]


async def test_a_watched_toml_file_with_a_huge_hex_integer_is_rejected(
    tmp_path: Path, fault_server: FaultServer, logs: list[dict[str, Any]]
) -> None:
    # A TOML hexadecimal literal is read in linear time and without Python's
    # digit limit: the document decodes, and the runtime must reject it and
    # keep serving (old code: the ValueError escaped the watch task).
    path = tmp_path / "healkit.toml"
    path.write_text(f'[services.svc]\nendpoints = ["{fault_server.url}"]\n')
    source = healkit.FileSource(path, poll_interval=0.01)
    async with healkit.Client(
        config=source, plugins=[TimeoutPlugin()], entry_points=False
    ) as client:
        runtime = client.runtime
        good = runtime.config
        path.write_text(
            f'[services.svc]\nendpoints = ["{fault_server.url}"]\n[services.svc.routing]\n'
            f"balance = {HEX}\n"
        )
        with anyio.fail_after(DEADLINE):
            await runtime.wait_for_rejections(1)
        assert runtime.config is good
        rejected = [e for e in logs if e["event"] == "healkit.config_rejected"]
        assert len(rejected) == 1
        response = await client.get("/ok", service="svc")
        assert response.status == 200


# -- decoding: no integer of more than 4,300 digits, whatever its base ----------------


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        # 3,000 base-60 digits: old code built a 5,300-digit integer, in time
        # quadratic in the length (a 1 MiB document took minutes).
        ("yaml", "a: " + ":".join(["1"] * 3000) + "\n"),
        ("yaml", f"a: {HEX}\n"),
        ("yaml", "a: 0b" + "1" * 15000 + "\n"),
        ("yaml", "a: 0x" + "f" * 4000 + "\n"),
        ("toml", f"a = {HEX}\n"),
        ("toml", "a = 0o" + "7" * 6000 + "\n"),
    ],
    ids=["yaml-base60", "yaml-hex", "yaml-binary", "yaml-short-hex", "toml-hex", "toml-octal"],
)
def test_an_integer_of_more_than_4300_digits_is_refused_in_any_base(fmt: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_document(text, fmt=fmt, origin="t")  # type: ignore[arg-type]
    [issue] = caught.value.issues
    assert (issue.path, issue.reason) == ("$", "an integer has more than 4,300 digits")


@pytest.mark.parametrize(
    ("fmt", "text", "value"),
    [
        ("yaml", "a: 1:30\n", 90),
        ("yaml", "a: 0x" + "f" * 3000 + "\n", int("f" * 3000, 16)),
        ("toml", "a = 0x" + "f" * 3000 + "\n", int("f" * 3000, 16)),
        ("yaml", "a: " + "9" * 4300 + "\n", int("9" * 4300)),
    ],
    ids=["base60", "yaml-hex", "toml-hex", "decimal-at-the-limit"],
)
def test_integers_within_the_limit_still_decode(fmt: str, text: str, value: int) -> None:
    assert parse_document(text, fmt=fmt, origin="t") == {"a": value}  # type: ignore[arg-type]


# -- the etcd snapshot file is written and read off the event loop --------------------


@contextmanager
def on_this_thread(*functions: Callable[..., object]) -> Iterator[list[str]]:
    """Record the calls of ``functions`` (Python or C) made on this thread (the event loop's)."""
    codes = {f.__code__: f.__name__ for f in functions if hasattr(f, "__code__")}
    builtins = [f for f in functions if not hasattr(f, "__code__")]
    seen: list[str] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code in codes:
            seen.append(codes[frame.f_code])
        elif event == "c_call" and any(arg is f for f in builtins):
            seen.append(getattr(arg, "__name__", "?"))

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)


def service_doc(endpoint: str) -> bytes:
    return json.dumps({"endpoints": [endpoint]}).encode()


async def test_the_etcd_snapshot_is_written_off_the_loop_on_each_revision(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    # Old code: every applied revision encoded the whole namespace and called
    # os.fsync on the event loop, stalling every call in flight meanwhile.
    snapshot = tmp_path / "healkit-etcd.json"
    async with etcd_server.client() as etcd:
        await etcd.put("/healkit/test/services/a", service_doc("http://a.test"))
        source = EtcdSource(etcd, namespace="test", snapshot_path=snapshot)
        async with healkit.Runtime(config=source, entry_points=False) as runtime:
            version = runtime.version
            with on_this_thread(os.fsync, Path.read_bytes) as on_loop:
                written = await etcd.put("/healkit/test/services/b", service_doc("http://b.test"))
                with anyio.fail_after(DEADLINE):
                    await runtime.wait_for_version(version + 1)
                    await source.wait_until(lambda s: s.applied_revision >= written.revision)
            assert on_loop == []
    stored = json.loads(snapshot.read_bytes())
    assert stored["revision"] == written.revision
    assert set(stored["documents"]) == {"services/a", "services/b"}


async def test_the_etcd_snapshot_is_read_off_the_loop(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    snapshot = tmp_path / "healkit-etcd.json"
    async with etcd_server.client() as etcd:
        await etcd.put("/healkit/test/services/a", service_doc("http://a.test"))
        async with healkit.Runtime(
            config=EtcdSource(etcd, namespace="test", snapshot_path=snapshot), entry_points=False
        ):
            pass
    await etcd_server.stop()
    async with etcd_server.client(timeout=1.0, connect_timeout=0.5) as etcd:
        source = EtcdSource(etcd, namespace="test", snapshot_path=snapshot)
        with on_this_thread(Path.read_bytes) as on_loop:
            async with healkit.Runtime(config=source, entry_points=False) as runtime:
                assert set(runtime.config.services) == {"a"}
        assert source.status.from_snapshot is True
        assert on_loop == []


async def test_a_snapshot_path_whose_directory_cannot_be_made_is_logged_not_raised(
    etcd_server: EtcdServer, tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    # Old code: mkdir ran outside the error handling, and the OSError
    # (FileExistsError: a file stands where the directory should be) came out
    # of the runtime's start. A snapshot that cannot be written is logged.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    snapshot = blocker / "healkit-etcd.json"
    async with etcd_server.client() as etcd:
        await etcd.put("/healkit/test/services/a", service_doc("http://a.test"))
        source = EtcdSource(etcd, namespace="test", snapshot_path=snapshot)
        async with healkit.Runtime(config=source, entry_points=False) as runtime:
            assert set(runtime.config.services) == {"a"}
    failed = [e for e in logs if e["event"] == "healkit.etcd_snapshot_failed"]
    assert failed
    assert failed[0]["path"] == str(snapshot)
