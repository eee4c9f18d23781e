"""Red-team findings against the configuration plane (issue 12), each a reproduction.

Huge integers: Python refuses to read a decimal integer of more than 4,300
digits (the conversion is quadratic), but YAML's and TOML's hexadecimal
literals, YAML 1.1's base 60 (``1:2:3``) and Python documents build such
integers anyway. Validation must still answer with a ConfigError, and a base-60
literal must not cost quadratic time to decode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import LogCapture

import healkit
from healkit import ConfigError, build_config
from healkit._config_formats import parse_document
from healkit.testing import FaultServer
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
    tmp_path: Path, fault_server: FaultServer, logs: LogCapture
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
        rejected = [e for e in logs.entries if e["event"] == "healkit.config_rejected"]
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
