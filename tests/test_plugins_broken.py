"""Broken and contract-breaking plugins: refused with a way out, diagnosed by ``healkit plugins``.

The broken plugins here are real installed distributions: a ``*.dist-info``
folder with an ``entry_points.txt`` on ``sys.path``, which is what
``importlib.metadata`` reads for any installed package.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

import healkit
from healkit._cli.entry import main

pytestmark = pytest.mark.anyio


def install(site: Path, distribution: str, entry_points: dict[str, str], module: str = "") -> None:
    """Install a distribution with ``healkit`` entry points (and a module) into ``site``."""
    info = site / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n", encoding="utf-8"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[healkit]\n{lines}", encoding="utf-8")
    if module:
        name = distribution.replace("-", "_")
        (site / f"{name}.py").write_text(textwrap.dedent(module), encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.fixture
def broken(site: Path) -> Path:
    install(site, "healkit-broken", {"broken": "healkit_broken_missing_module:Plugin"})
    return site


def test_a_client_names_the_broken_plugin_and_how_to_block_it(broken: Path) -> None:
    with pytest.raises(healkit.PluginError) as caught:
        healkit.Client()
    message = str(caught.value)
    assert caught.value.plugin == "broken"
    assert caught.value.hook == "load"
    assert "ModuleNotFoundError" in message
    assert "HEALKIT_BLOCK_PLUGINS=broken" in message
    assert "block_plugins=['broken']" in message


async def test_blocking_the_broken_plugin_lets_clients_start(
    broken: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with healkit.Client(block_plugins=["broken"]):
        pass
    monkeypatch.setenv("HEALKIT_BLOCK_PLUGINS", "broken")
    async with healkit.Client():
        pass


def test_healkit_plugins_lists_the_broken_plugin_and_the_others(
    broken: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plugins"]) == 0
    captured = capsys.readouterr()
    assert "broken: healkit-broken 0.1 BROKEN" in captured.out
    assert "ModuleNotFoundError" in captured.out
    assert "timeout: healkit-timeout" in captured.out
    assert "HEALKIT_BLOCK_PLUGINS=broken" in captured.err
    assert main(["plugins", "--check"]) == 1
    assert main(["plugins", "--check", "--block", "broken"]) == 0


def test_healkit_plugins_json_marks_the_error(
    broken: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plugins", "--json"]) == 0
    captured = capsys.readouterr()
    infos = {info["name"]: info for info in json.loads(captured.out)}
    # The problem goes to stderr with --json too; the JSON on stdout stays whole.
    assert "HEALKIT_BLOCK_PLUGINS=broken" in captured.err
    assert "ModuleNotFoundError" in infos["broken"]["error"]
    assert infos["broken"]["distribution"] == "healkit-broken"
    assert infos["timeout"]["error"] is None


BAD_SECTIONS = """
    import msgspec
    import healkit


    class Settings(msgspec.Struct, frozen=True):
        limit: int  # no default: a service that omits the section has no safe policy


    class NoDefault:
        @healkit.hookimpl
        def healkit_config_sections(self):
            return [healkit.ConfigSection("nodefault", Settings)]


    class NotAStruct:
        @healkit.hookimpl
        def healkit_config_sections(self):
            return [healkit.ConfigSection("notastruct", dict)]


    class BadName:
        @healkit.hookimpl
        def healkit_config_sections(self):
            return [healkit.ConfigSection("bad-name", Settings)]


    class NotSections:
        @healkit.hookimpl
        def healkit_config_sections(self):
            return ["retry"]
"""


def test_check_reports_bad_sections(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = ("NoDefault", "NotAStruct", "BadName", "NotSections")
    install(
        site,
        "healkit-bad-sections",
        {name.lower(): f"healkit_bad_sections:{name}" for name in names},
        BAD_SECTIONS,
    )
    assert main(["plugins"]) == 0  # listed, not checked
    capsys.readouterr()
    assert main(["plugins", "--check", "--json"]) == 1
    errors = {info["name"]: info["error"] for info in json.loads(capsys.readouterr().out)}
    assert "every setting needs a safe default" in errors["nodefault"]
    assert "must be a msgspec Struct" in errors["notastruct"]
    assert "invalid config section name 'bad-name'" in errors["badname"]
    assert "expected a sequence of healkit.ConfigSection" in errors["notsections"]
    assert errors["timeout"] is None


class AsyncPreRequest:
    healkit_name = "async-pre-request"

    @healkit.hookimpl
    async def healkit_pre_request(self, call: Any, attempt: Any) -> None:
        """Would never run: pluggy would return the coroutine unawaited."""


class AsyncFallback:
    healkit_name = "async-fallback"

    @healkit.hookimpl
    async def healkit_fallback(self, call: Any, error: Any) -> None:
        """Allowed: healkit awaits what a fallback returns."""


def test_an_async_per_call_hook_is_refused_at_registration() -> None:
    with pytest.raises(healkit.PluginError) as caught:
        healkit.create_plugin_manager(plugins=[AsyncPreRequest()], entry_points=False)
    assert caught.value.plugin == "async-pre-request"
    assert caught.value.hook == "register"
    message = str(caught.value)
    assert "healkit_pre_request is an async function" in message
    assert (
        "only healkit_admit, healkit_fallback, healkit_shutdown may return an awaitable" in message
    )


def test_an_async_fallback_is_accepted() -> None:
    pm = healkit.create_plugin_manager(plugins=[AsyncFallback()], entry_points=False)
    assert pm.has_plugin("async-fallback")


def test_plugin_info_error_defaults_to_none() -> None:
    infos = healkit.describe_plugins(healkit.create_plugin_manager(entry_points=False))
    assert all(info.error is None for info in infos)
    assert {info.source for info in infos} == {"built-in"}
    assert msgspec.json.decode(msgspec.json.encode(infos[0]))["error"] is None
