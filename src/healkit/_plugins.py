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

A plugin is checked when it is registered, whichever way (the
:class:`PluginManager` does it): no wrapper on a per-call hook or a hook between
plugins (they are compiled into plain function calls), no method named after a
hook but not marked as its implementation and no ``async def`` implementation of a hook
that may not return an awaitable (pluggy would hand back an unawaited
coroutine, and the plugin's effect would silently never happen).
:func:`inspect_plugins` loads the same plugins without stopping at the first
broken one, for ``healkit plugins``.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final, final

import msgspec
import pluggy

from healkit import hookspecs
from healkit._config.models import ConfigSection
from healkit._degraded import DegradedResponses
from healkit._errors import PluginError
from healkit._plan import PER_CALL_HOOKS
from healkit._routing.plugin import Router

__all__ = [
    "BLOCK_ENV",
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "call_each",
    "check_plugin_sections",
    "create_plugin_manager",
    "describe_plugins",
    "inspect_plugins",
    "installed_plugin_names",
]

ENTRY_POINT_GROUP: Final = "healkit"
BLOCK_ENV: Final = "HEALKIT_BLOCK_PLUGINS"
"""Comma-separated plugin names never to load, in addition to ``block=``."""
BUILTIN_PLUGINS: Final[tuple[Callable[[], object], ...]] = (DegradedResponses, Router)
"""The core's own plugins, registered first in every plugin manager."""
AWAITABLE_HOOKS: Final = frozenset({"healkit_admit", "healkit_fallback", "healkit_shutdown"})
COMPILED_HOOKS: Final = frozenset(
    {*PER_CALL_HOOKS, "healkit_endpoint_available", "healkit_circuit_state", "healkit_tls_context"}
)
"""The hooks called through compiled functions (``compile_hook``): no wrappers there."""
_HOOK_NAMES: Final = frozenset(name for name in vars(hookspecs) if name.startswith("healkit_"))
"""The hooks whose implementations may return an awaitable (healkit awaits it)."""


@final
class PluginManager(pluggy.PluginManager):
    """pluggy's plugin manager, remembering the distribution of each entry-point plugin.

    Attributes:
        distributions: ``(distribution, version)`` of each plugin that has one.
        builtins: the names of healkit's own built-in plugins.
        broken: the plugins that could not be loaded or registered, with the
            error, when the manager was built by :func:`inspect_plugins`.

    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, tuple[str, str]] = {}
        self.builtins: set[str] = set()
        self.broken: dict[str, PluginError] = {}
        self._observers: set[str] = set()

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin`` as pluggy does; read and check its declared attributes.

        ``healkit_name`` and ``healkit_observer`` (:class:`healkit.hookspecs.Plugin`)
        are read here, once, and checked; ``name`` defaults to ``healkit_name``
        (else the class name).

        Raises:
            PluginError: an attribute is not of its type.
            ValueError: pluggy's: the plugin or its name is registered already.
            pluggy.PluginValidationError: pluggy's: an implementation does not
                match its specification.

        """
        try:
            observer = declared_observer(plugin)
            if name is None:
                name = declared_name(plugin)
        except TypeError as exc:
            raise PluginError(name or type(plugin).__name__, "register", exc) from exc
        registered = super().register(plugin, name)
        if registered is None:
            return None  # blocked
        try:
            _check_contract(self, plugin)
        except TypeError as exc:
            super().unregister(plugin, registered)
            raise PluginError(registered, "register", exc) from exc
        if observer:
            self._observers.add(registered)
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:  # noqa: ANN401 - pluggy's signature
        """Unregister a plugin as pluggy does, and forget its role."""
        if name is None and plugin is not None:
            name = self.get_name(plugin)
        removed = super().unregister(plugin, name)
        if name is not None:
            self._observers.discard(name)
        return removed

    def is_observer(self, name: str) -> bool:
        """Whether the plugin registered as ``name`` declared itself an observer."""
        return name in self._observers


@final
class PluginInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What ``healkit plugins`` shows about one installed plugin.

    Attributes:
        name: the registered (or entry point) name.
        distribution: the distribution that installed it, if any.
        version: that distribution's version.
        hooks: the hooks it implements (none for a broken plugin).
        observer: whether it is an observer plugin.
        source: ``"built-in"`` (part of healkit's core), ``"entry point"`` (an
            installed distribution's ``healkit`` entry point) or ``"explicit"``
            (passed to ``Client(plugins=...)`` / ``create_plugin_manager``).
        error: why the plugin cannot be used (it failed to import, to build or
            to register, or ``healkit plugins --check`` found a problem in it);
            ``None`` for a working plugin.

    """

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    observer: bool
    source: str
    error: str | None = None


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
        PluginError: an entry point failed to load, a plugin breaks the hook
            contract (see the module docstring), or two plugins share a name.
            The message says how to block the plugin.

    """
    return _build(plugins, block, entry_points=entry_points, keep_going=False)


def inspect_plugins(*, block: Collection[str] = ()) -> PluginManager:
    """Load every installed plugin as :func:`create_plugin_manager` does, without failing.

    A plugin that fails to load or to register is left out and recorded in
    :attr:`PluginManager.broken`; the others are registered as usual. This is
    what ``healkit plugins`` diagnoses with; a runtime never uses it.
    """
    return _build((), block, entry_points=True, keep_going=True)


def installed_plugin_names() -> list[str]:
    """Return the names of the built-in and entry-point plugins, sorted, loading none.

    These are the names ``block=`` (and ``healkit ... --block``) can leave out.
    """
    names = {_name_of(factory()) for factory in BUILTIN_PLUGINS}
    names.update(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def _build(
    plugins: Iterable[object],
    block: Collection[str],
    *,
    entry_points: bool,
    keep_going: bool,
) -> PluginManager:
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
        _register_entry_points(pm, replaced, keep_going=keep_going)
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


def _register_entry_points(
    pm: PluginManager, replaced: Collection[str], *, keep_going: bool
) -> None:
    for ep in sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
    ):
        if pm.is_blocked(ep.name) or ep.name in replaced:
            continue
        if ep.dist is not None:
            pm.distributions[ep.name] = (ep.dist.name, ep.dist.version)
        try:
            _load_entry_point(pm, ep)
        except PluginError as error:
            if not keep_going:
                raise
            pm.broken[ep.name] = error


def _load_entry_point(pm: PluginManager, ep: importlib.metadata.EntryPoint) -> None:
    if pm.has_plugin(ep.name) or ep.name in pm.broken:
        raise PluginError(ep.name, "load", LookupError("two entry points share this name"))
    try:
        loaded = ep.load()
        plugin = loaded() if isinstance(loaded, type) else loaded
    except Exception as exc:
        raise PluginError(ep.name, "load", exc) from exc
    _register(pm, plugin, ep.name)


def _register(pm: PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except ValueError as exc:
        raise PluginError(name, "register", exc) from exc
    except pluggy.PluginValidationError as exc:
        raise PluginError(name, "register", exc) from exc


def _check_contract(pm: PluginManager, plugin: object) -> None:
    """Refuse what pluggy accepts but healkit's pipeline cannot honour.

    Raises:
        TypeError: a wrapper on a hook of :data:`COMPILED_HOOKS`, an ``async def`` (or async
            generator) implementation of a hook that may not return an
            awaitable, or a method named after a hook but not marked with
            ``@healkit.hookimpl`` (it would silently never be called).

    """
    for attribute in dir(plugin):
        if (
            attribute.startswith("healkit_")
            and attribute in _HOOK_NAMES
            and pm.parse_hookimpl_opts(plugin, attribute) is None
            and inspect.isroutine(getattr(plugin, attribute, None))
        ):
            raise TypeError(
                f"{attribute} is not marked with @healkit.hookimpl: it would never be called"
            )
    for caller in pm.get_hookcallers(plugin) or ():
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            if caller.name in COMPILED_HOOKS and (impl.hookwrapper or impl.wrapper):
                raise TypeError(
                    f"{caller.name} is a wrapper: wrappers are not supported on "
                    "per-call hooks and the hooks between plugins; use tryfirst/trylast"
                )
            function = impl.function
            if caller.name not in AWAITABLE_HOOKS and (
                inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
            ):
                allowed = ", ".join(sorted(AWAITABLE_HOOKS))
                raise TypeError(
                    f"{caller.name} is an async function, but this hook may not await "
                    f"(only {allowed} may return an awaitable; start a background task "
                    "in healkit_startup for other I/O)"
                )


def check_plugin_sections(pm: pluggy.PluginManager) -> dict[str, str]:
    """Ask every plugin for its configuration sections; return each plugin's problem.

    Finds, before any configuration is applied, what ``config validate`` or
    the first call would otherwise find: a section with an invalid name, a
    settings type that is not a msgspec Struct, a setting without a default,
    a result that is not a sequence of :class:`healkit.ConfigSection`, or two
    plugins declaring one section.
    """
    problems: dict[str, str] = {}
    owners: dict[str, str] = {}

    def failed(plugin: str, hook: str, error: Exception) -> None:
        problems[plugin] = f"{hook}: {type(error).__name__}: {error}"

    for plugin, result in call_each(pm, "healkit_config_sections", {}, failed):
        if not isinstance(result, Sequence) or not all(
            isinstance(section, ConfigSection) for section in result
        ):
            problems[plugin] = (
                "healkit_config_sections: expected a sequence of healkit.ConfigSection, "
                f"got {result!r}"
            )
            continue
        for section in result:
            other = owners.setdefault(section.name, plugin)
            if other != plugin:
                problems[plugin] = f"section {section.name!r} is also declared by {other!r}"
    return problems


def _name_of(plugin: object) -> str:
    try:
        return declared_name(plugin)
    except TypeError as exc:
        raise PluginError(type(plugin).__name__, "register", exc) from exc


def declared_name(plugin: object) -> str:
    """Return the plugin's ``healkit_name``, or its class name if it declares none.

    Raises:
        TypeError: ``healkit_name`` is not a non-empty string.

    """
    name = getattr(plugin, "healkit_name", None)
    if name is None:
        return type(plugin).__name__
    if not isinstance(name, str) or not name:
        raise TypeError(f"healkit_name must be a non-empty str, not {name!r}")
    return name


def declared_observer(plugin: object) -> bool:
    """Return the plugin's ``healkit_observer`` (``False`` if it declares none).

    Raises:
        TypeError: ``healkit_observer`` is not a bool.

    """
    observer = getattr(plugin, "healkit_observer", False)
    if not isinstance(observer, bool):
        raise TypeError(f"healkit_observer must be a bool, not {observer!r}")
    return observer


def describe_plugins(
    pm: PluginManager, problems: Mapping[str, str] | None = None
) -> list[PluginInfo]:
    """Return one :class:`PluginInfo` per plugin, sorted by name.

    Args:
        pm: the plugin manager; its broken plugins (see :func:`inspect_plugins`)
            are listed too, with their error.
        problems: further problems by plugin name (from a check), shown as the
            plugin's ``error``.

    """
    problems = problems or {}
    dists = pm.distributions
    infos: list[PluginInfo] = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(name)
        infos.append(
            PluginInfo(
                name=name,
                distribution=dist[0] if dist else None,
                version=dist[1] if dist else None,
                hooks=tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())),
                observer=pm.is_observer(name),
                source="built-in"
                if name in pm.builtins
                else ("entry point" if dist else "explicit"),
                error=problems.get(name),
            )
        )
    infos.extend(
        PluginInfo(
            name=name,
            distribution=dists[name][0] if name in dists else None,
            version=dists[name][1] if name in dists else None,
            hooks=(),
            observer=False,
            source="entry point",
            error=str(error),
        )
        for name, error in pm.broken.items()
    )
    return sorted(infos, key=lambda i: i.name)
