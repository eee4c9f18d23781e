"""The plugin's public surface and its registration through the entry point."""

from __future__ import annotations

import healkit
import healkit_tls


def test_all_is_exactly_the_public_names() -> None:
    public = {name for name in vars(healkit_tls) if not name.startswith("_")}
    assert public - {"annotations"} == set(healkit_tls.__all__)


def test_the_entry_point_registers_it_as_tls() -> None:
    runtime = healkit.Runtime()
    [info] = [i for i in healkit.describe_plugins(runtime.plugin_manager) if i.name == "tls"]
    assert (info.distribution, info.source) == ("healkit-tls", "entry point")
    assert "healkit_on_error" in info.hooks
    assert isinstance(runtime.plugin_manager.get_plugin("tls"), healkit_tls.TlsPlugin)


def test_without_tls_settings_the_plugin_stays_out_of_the_call_plan() -> None:
    runtime = healkit.Runtime(
        config={"services": {"a": {}}}, plugins=[healkit_tls.TlsPlugin()], entry_points=False
    )
    assert "tls" in runtime._plan.idle
    runtime.apply({"services": {"a": {"tls": {"minimum_version": "1.3"}}}}, origin="test")
    assert "tls" not in runtime._plan.idle


def test_the_context_of_a_service_for_probes() -> None:
    plugin = healkit_tls.TlsPlugin()
    runtime = healkit.Runtime(
        config={"services": {"a": {"tls": {"minimum_version": "1.3"}}, "b": {}}},
        plugins=[plugin],
        entry_points=False,
    )
    context = plugin.context("a")
    assert context is not None
    assert context.minimum_version.name == "TLSv1_3"
    assert plugin.context("b") is None
    assert runtime.config.policy("a").name == "a"
