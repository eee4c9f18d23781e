"""Building the plugin manager: entry points, explicit plugins, blocking, listing.

Nothing happens at import time. :func:`create_plugin_manager` registers, in
this order: healkit's built-in plugins (:data:`BUILTIN_PLUGINS`), the plugins
of the ``healkit`` entry-point group (sorted by entry point name), then the
plugins passed explicitly (in the order given). pluggy calls the most recently
registered first, so explicit plugins run before entry-point plugins, and both
before the built-in ones, unless ``tryfirst``/``trylast`` say otherwise. An
explicit plugin replaces the built-in or entry-point plugin of the same name.
Any of them can be blocked by name.

An entry point names a plugin class (instantiated with no arguments, once per
plugin manager, so each client has its own plugin state) or a ready object.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final, final

import msgspec
import pluggy

from healkit import hookspecs
from healkit._degraded import DegradedResponses
from healkit._errors import PluginError
from healkit._routing import Router

__all__ = [
    "BLOCK_ENV",
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "call_each",
    "create_plugin_manager",
    "describe_plugins",
]

ENTRY_POINT_GROUP: Final = "healkit"
BLOCK_ENV: Final = "HEALKIT_BLOCK_PLUGINS"
"""Comma-separated plugin names never to load, in addition to ``block=``."""
BUILTIN_PLUGINS: Final[tuple[Callable[[], object], ...]] = (DegradedResponses, Router)
"""The core's own plugins, registered first in every plugin manager."""


@final
class PluginManager(pluggy.PluginManager):
    """pluggy's plugin manager, remembering the distribution of each entry-point plugin."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, tuple[str, str]] = {}
        self.builtins: set[str] = set()


@final
class PluginInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What ``healkit plugins`` shows about one registered plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    observer: bool
    source: str


def create_plugin_manager(
    *,
    plugins: Iterable[object] = (),
    block: Collection[str] = (),
    entry_points: bool = True,
) -> PluginManager:
    """Build a plugin manager with healkit's hook specifications and plugins.

    Args:
        plugins: plugin objects to register after the entry-point plugins. One
            whose name is that of a built-in or entry-point plugin takes its
            place (to pass an instance built with other arguments).
        block: names of plugins not to load or register, built-in, from entry
            points or passed explicitly (also read from the
            ``HEALKIT_BLOCK_PLUGINS`` environment variable).
        entry_points: whether to load the ``healkit`` entry-point group (the
            built-in plugins are registered either way).

    Raises:
        PluginError: an entry point failed to load, or two plugins share a name.

    """
    pm = PluginManager()
    blocked = set(block) | {
        n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()
    }
    for name in sorted(blocked):
        pm.set_blocked(name)
    explicit = [(plugin, _name_of(plugin)) for plugin in plugins]
    # A plugin passed explicitly takes the place of the built-in or entry-point
    # plugin of the same name (an instance built with other arguments).
    replaced = {name for _, name in explicit}
    _register_builtins(pm, replaced)
    if entry_points:
        _register_entry_points(pm, replaced)
    for plugin, name in explicit:
        _register(pm, plugin, name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(pm.get_name(exc.plugin) or repr(exc.plugin), "register", exc) from exc
    return pm


def call_each(
    pm: pluggy.PluginManager,
    hook: str,
    arguments: Mapping[str, object],
    on_error: Callable[[str, str, Exception], None],
) -> list[tuple[str, Any]]:
    """Call every implementation of a lifecycle hook, in pluggy's order, one by one.

    Unlike ``pm.hook.<name>(...)``, one plugin's exception does not keep the
    others from running: it goes to ``on_error(plugin, hook, exception)``, which
    may raise (to fail) or return (to carry on).

    Returns:
        ``(plugin name, result)`` for each implementation that returned.

    """
    results: list[tuple[str, Any]] = []
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
        try:
            result = impl.function(*[arguments[name] for name in impl.argnames])
        except Exception as error:  # noqa: BLE001 - reported to on_error with the plugin's name
            on_error(impl.plugin_name, hook, error)
            continue
        results.append((impl.plugin_name, result))
    return results


def _register_builtins(pm: PluginManager, replaced: Collection[str]) -> None:
    core = ("healkit", importlib.metadata.version("healkit"))
    for factory in BUILTIN_PLUGINS:
        plugin = factory()
        name = _name_of(plugin)
        if not pm.is_blocked(name) and name not in replaced:
            _register(pm, plugin, name)
            pm.distributions[name] = core
            pm.builtins.add(name)


def _register_entry_points(pm: PluginManager, replaced: Collection[str]) -> None:
    for ep in sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
    ):
        if pm.is_blocked(ep.name) or ep.name in replaced:
            continue
        if pm.has_plugin(ep.name):
            raise PluginError(ep.name, "load", LookupError("two entry points share this name"))
        try:
            loaded = ep.load()
            plugin = loaded() if isinstance(loaded, type) else loaded
        except Exception as exc:
            raise PluginError(ep.name, "load", exc) from exc
        _register(pm, plugin, ep.name)
        if ep.dist is not None:
            pm.distributions[ep.name] = (ep.dist.name, ep.dist.version)


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except ValueError as exc:
        raise PluginError(name, "register", exc) from exc
    except pluggy.PluginValidationError as exc:
        raise PluginError(name, "register", exc) from exc


def _name_of(plugin: object) -> str:
    return str(getattr(plugin, "healkit_name", None) or type(plugin).__name__)


def describe_plugins(pm: PluginManager) -> list[PluginInfo]:
    """Return one :class:`PluginInfo` per registered plugin, sorted by name."""
    infos: list[PluginInfo] = []
    dists = pm.distributions
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))
        dist = dists.get(name)
        infos.append(
            PluginInfo(
                name=name,
                distribution=dist[0] if dist else None,
                version=dist[1] if dist else None,
                hooks=hooks,
                observer=bool(getattr(plugin, "healkit_observer", False)),
                source="built-in"
                if name in pm.builtins
                else ("entry point" if dist else "explicit"),
            )
        )
    return sorted(infos, key=lambda i: i.name)
