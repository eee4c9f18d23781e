"""The runtime: plugins, the compiled call plan, live configuration, background tasks.

A :class:`Runtime` is what a :class:`healkit.Client`, a ``@resilient`` call site
or the aiohttp middleware runs calls with. It owns:

* the plugin manager (built by the factory; no global registry);
* the compiled :class:`~healkit._plan.CallPlan`, rebuilt when plugins change;
* the configuration in force, replaced atomically when a source submits a
  valid document (an invalid one is rejected and the last good one stays);
* the background tasks of plugins and sources, cancelled and awaited on stop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import math
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, Final, NamedTuple, Self, TypeVar, final

import aiohttp
import pluggy

from healkit import _log
from healkit._clock import SYSTEM_CLOCK, Clock
from healkit._config.compact import compacted
from healkit._config.models import (
    CORE_TIMEOUTS,
    ConfigSection,
    HealkitConfig,
    ServicePolicy,
    Timeouts,
    build_config,
)
from healkit._config.sources import ConfigSource, FileSource, InMemorySource, PartialConfigSource
from healkit._errors import ConfigError, ConfigIssue, PluginError
from healkit._offload import off_loop
from healkit._plan import PER_CALL_HOOKS, CallPlan
from healkit._plugins import PluginManager, call_each, create_plugin_manager
from healkit._stash import StashKey
from healkit._timer import TimerWheels
from healkit.events import ConfigApplied, ConfigRejected

__all__ = ["ConfigInput", "Runtime", "current_runtime", "default_runtime", "runtime_or_build"]

ConfigInput = Mapping[str, Any] | str | os.PathLike[str] | ConfigSource | None
"""What ``config=`` accepts: a document, a file path, a source, or ``None`` (all defaults)."""

SHUTDOWN_TIMEOUT: Final = 5.0
T = TypeVar("T")

_current: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar(
    "healkit_runtime", default=None
)


def _timeouts(answer: object) -> Timeouts:
    """Accept a ``healkit_attempt_timeouts`` answer.

    Raises:
        TypeError: it is not a :class:`Timeouts`.

    """
    if not isinstance(answer, Timeouts):
        raise TypeError(f"returned {answer!r}, not a healkit.Timeouts")
    return answer


def _seconds(answer: object) -> float:
    """Accept a ``healkit_call_deadline`` answer: a number of seconds > 0 (``inf``: none).

    Raises:
        ValueError: it is not.

    """
    if isinstance(answer, bool) or not isinstance(answer, int | float) or not answer > 0:
        raise ValueError(f"returned {answer!r}, not a number of seconds > 0")
    return float(answer)


def _attempts(answer: object) -> int:
    """Accept a ``healkit_max_attempts`` answer: an int of at least 1.

    Raises:
        ValueError: it is not.

    """
    if isinstance(answer, bool) or not isinstance(answer, int) or answer < 1:
        raise ValueError(f"returned {answer!r}, not a number of attempts >= 1")
    return answer


_MAX_ATTEMPTS: Final = StashKey[int]("healkit.max_attempts")
"""The answer of ``healkit_max_attempts`` for a policy, kept in ``policy.stash``."""


def _per_call_hooks(names: Iterable[str]) -> frozenset[str]:
    """Return ``names`` (a ``healkit_idle_hooks`` answer) if all are per-call hooks.

    Raises:
        ValueError: one is not (a typo would otherwise leave nothing out, silently).

    """
    named = frozenset(names)
    if unknown := named - frozenset(PER_CALL_HOOKS):
        raise ValueError(f"not per-call hooks: {', '.join(sorted(unknown))}")
    return named


class _Idleness(NamedTuple):
    """What the call plan leaves out: whole plugins, and ``(plugin, hook)`` pairs."""

    plugins: frozenset[str] = frozenset()
    hooks: frozenset[tuple[str, str]] = frozenset()


@final
class Runtime:
    """Plugins, call plan, configuration and background work, shared by call sites.

    Args:
        config: the configuration: a document (mapping), a path to a TOML/YAML/JSON
            file (watched for changes), a :class:`ConfigSource`, or ``None``.
        plugins: plugin objects to register in addition to entry-point plugins.
        block_plugins: entry-point plugin names not to load.
        entry_points: whether to load plugins from the ``healkit`` entry points.
        clock: the clock for deadlines, windows and backoff (inject one in tests).

    Raises:
        ConfigError: ``config`` is a document or file that is invalid.
        PluginError: a plugin failed to load or register.

    """

    def __init__(
        self,
        *,
        config: ConfigInput = None,
        plugins: Iterable[object] = (),
        block_plugins: Iterable[str] = (),
        entry_points: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock
        self.plugin_manager: PluginManager = create_plugin_manager(
            plugins=plugins, block=frozenset(block_plugins), entry_points=entry_points
        )
        self.plugin_errors: Counter[str] = Counter()
        self.sections = config_sections(self.plugin_manager)
        self._plan = self._compile_plan(_Idleness())
        """The compiled hooks the executor runs; replaced whole when plugins change."""
        self._timers = TimerWheels()
        """The attempt time limits of every call, on shared timer ticks."""
        self.repeats = _log.Repeats()
        """Repeated failures, counted and logged as summaries (see ``healkit._log``)."""
        self._source = _as_source(config)
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._changed = asyncio.Event()
        self.version = 0
        self.rejections = 0
        self._raw: object = {}
        """The document in force, to validate again when a plugin is registered
        (:func:`~healkit._config.compact.compacted`: each service's document as
        bytes when it is plain)."""
        self._config: HealkitConfig = build_config({}, self.sections, origin="defaults")
        if isinstance(self._source, InMemorySource | FileSource):
            # Local documents are read at once: a bad one fails here, loudly.
            self._apply_or_raise(self._source.read(), origin=self._source.origin)
        self._configure(None)

    # -- configuration ---------------------------------------------------------

    @property
    def config(self) -> HealkitConfig:
        """The configuration snapshot in force."""
        return self._config

    @property
    def source(self) -> ConfigSource:
        """Where the configuration comes from (a plugin may listen to an etcd source's keys)."""
        return self._source

    def apply(self, raw: object, *, origin: str = "python") -> HealkitConfig:
        """Validate a whole new document and swap it in.

        Raises:
            ConfigError: the document is invalid; the configuration in force stays.

        """
        return self._apply_or_raise(raw, origin=origin, configure=True)

    async def submit(self, raw: object, *, origin: str) -> ConfigError | None:
        """Apply ``raw`` from a source; log and return the error if rejected.

        The document is validated in a worker thread (the event loop keeps
        serving meanwhile), then swapped in on the loop.
        """
        try:
            config, kept = await self._validate_off_loop(raw, origin)
        except ConfigError as error:
            self.reject(error)
            return error
        self._install(config, kept, origin=origin, configure=True)
        return None

    def reject(self, error: ConfigError) -> None:
        """Log and count a rejected document (the configuration in force stays)."""
        _log.config_rejected(error)
        self.rejections += 1
        self._changed.set()
        self.emit(ConfigRejected(origin=error.origin, issues=tuple(map(str, error.issues))))

    async def wait_for_version(self, version: int) -> None:
        """Return once the configuration version is at least ``version``."""
        while self.version < version:
            self._changed.clear()
            await self._changed.wait()

    async def wait_for_rejections(self, count: int) -> None:
        """Return once at least ``count`` documents were rejected since start."""
        while self.rejections < count:
            self._changed.clear()
            await self._changed.wait()

    def _apply_or_raise(
        self, raw: object, *, origin: str, configure: bool = False, keep: bool = True
    ) -> HealkitConfig:
        failures: list[tuple[str, str, Exception]] = []
        config, kept = _prepared(
            self.plugin_manager,
            raw,
            self.sections,
            origin=origin,
            previous=self._config if keep else None,
            failures=failures,
        )
        for failure in failures:
            self._plugin_failed(*failure)
        return self._install(config, kept, origin=origin, configure=configure)

    async def _validate_off_loop(self, raw: object, origin: str) -> tuple[HealkitConfig, object]:
        """Validate ``raw`` and run ``healkit_prepare`` in a worker thread.

        Returns the snapshot, and what the runtime keeps of ``raw``
        (:func:`~healkit._config.compact.compacted`, worked out in the same thread).

        The new snapshot keeps the policies of the services it leaves unchanged
        (``build_config(previous=...)``), so the plugins' ``healkit_configure``
        does work in proportion to what changed, and the plugins' look at every
        service (``healkit_prepare``) happens off the event loop. If a plugin
        was registered or another document installed meanwhile, it is
        validated again.

        Raises:
            ConfigError: the document is invalid.

        """
        while True:
            sections, previous = self.sections, self._config
            failures: list[tuple[str, str, Exception]] = []
            build = functools.partial(
                _prepared,
                self.plugin_manager,
                raw,
                sections,
                origin=origin,
                previous=previous,
                failures=failures,
            )
            config, kept = await off_loop(build)
            for failure in failures:
                self._plugin_failed(*failure)
            if sections is self.sections and previous is self._config:
                return config, kept

    def _install(
        self, config: HealkitConfig, kept: object, *, origin: str, configure: bool
    ) -> HealkitConfig:
        previous = self._config
        self._config = config
        self._raw = kept
        self.version += 1
        if configure:
            self._configure(previous)
        self._changed.set()
        _log.config_applied(origin, self.version, len(config.services))
        self.emit(ConfigApplied(origin=origin, version=self.version, services=len(config.services)))
        return config

    def _configure(self, previous: HealkitConfig | None) -> None:
        # The document is accepted: a plugin that fails to take it is reported
        # and does not keep the others from the new configuration.
        arguments = {"config": self._config, "previous": previous, "runtime": self}
        call_each(self.plugin_manager, "healkit_configure", arguments, self._plugin_failed)
        self.refresh_plan()

    def refresh_plan(self) -> None:
        """Ask the plugins again what they have nothing to do; recompile the plan if that changed.

        The runtime asks after every configuration change by itself. A plugin
        whose ``healkit_idle`` or ``healkit_idle_hooks`` answer changes for
        another reason (an OpenTelemetry SDK installed since, for the tracing
        plugin) calls this. Calls already running finish under the plan they
        started with.
        """
        idleness = self._idleness()
        if idleness != _Idleness(self._plan.idle, self._plan.idle_hooks):
            self._plan = self._compile_plan(idleness)

    def _compile_plan(self, idleness: _Idleness) -> CallPlan:
        return CallPlan(
            self.plugin_manager,
            self._observer_failed,
            _log.fallback_failed,
            idle=idleness.plugins,
            idle_hooks=idleness.hooks,
        )

    def _idleness(self) -> _Idleness:
        """Return what the plugins say they have nothing to do per call under the config in force.

        Asks ``healkit_idle`` and ``healkit_idle_hooks`` (see their
        specifications). A plugin whose answer raises, or names a hook that is
        not a per-call hook, is kept in the plan whole (and the error
        reported): when in doubt, a plugin runs.
        """
        pm, arguments = self.plugin_manager, {"config": self._config}
        failed: set[str] = set()

        def refused(plugin: str, hook: str, error: Exception) -> None:
            failed.add(plugin)
            self._plugin_failed(plugin, hook, error)

        plugins = {
            name
            for name, idle in call_each(pm, "healkit_idle", arguments, refused)
            if idle is True and name not in failed
        }
        hooks: set[tuple[str, str]] = set()
        for name, named in call_each(pm, "healkit_idle_hooks", arguments, refused):
            if name in plugins or name in failed:
                continue
            try:
                hooks.update((name, hook) for hook in _per_call_hooks(named))
            except (TypeError, ValueError) as error:
                refused(name, "healkit_idle_hooks", error)
        return _Idleness(frozenset(plugins), frozenset(hooks))

    # -- plugins ---------------------------------------------------------------

    def register(self, plugin: object, *, name: str | None = None) -> None:
        """Register a plugin at run time: recompile the plan, revalidate the config.

        Raises:
            PluginError: the plugin breaks the hook contract (checked by the
                plugin manager, as for plugins given when the runtime is built).
            ConfigError: the configuration in force is invalid with the new
                plugin's sections; the plugin is unregistered again.

        """
        self.plugin_manager.register(plugin, name=name)
        try:
            self.plugin_manager.check_pending()
            self.sections = config_sections(self.plugin_manager)
            # New plugins derive their own state: no policy of the old snapshot is kept.
            self._apply_or_raise(self._raw, origin="plugins", configure=True, keep=False)
        except (ConfigError, pluggy.PluginValidationError):
            self.plugin_manager.unregister(plugin)
            self.sections = config_sections(self.plugin_manager)
            raise
        self._plan = self._compile_plan(self._idleness())

    def _observer_failed(self, plugin: str, hook: str, error: Exception) -> None:
        if plugin not in self.plugin_errors:
            _log.plugin_failed(plugin, hook, error)
        self.plugin_errors[plugin] += 1

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        """Return the aiohttp trace configs the plugins contribute (``healkit_trace_configs``).

        Raises:
            PluginError: a plugin's implementation failed.

        """
        found: list[aiohttp.TraceConfig] = []
        for _, configs in call_each(
            self.plugin_manager, "healkit_trace_configs", {}, _raise_plugin_error
        ):
            found.extend(configs)
        return found

    def attempt_timeouts(self, policy: ServicePolicy) -> Timeouts:
        """Return the limits of one attempt to ``policy``'s service (``healkit_attempt_timeouts``).

        The first plugin's answer, else the core's limits; kept with the policy
        for the snapshot's lifetime (:meth:`call_limits`). A plugin whose
        implementation raises, or answers something else than a ``Timeouts``,
        is logged and counted in ``plugin_errors``, and skipped.
        """
        return self.call_limits(policy)[0]

    def call_deadline(self, policy: ServicePolicy) -> float:
        """Return the seconds a call to ``policy``'s service may take (``healkit_call_deadline``).

        The first plugin's answer, else ``math.inf`` (no limit); kept with the
        policy like :meth:`attempt_timeouts`.
        """
        return self.call_limits(policy)[1]

    def call_limits(self, policy: ServicePolicy) -> tuple[Timeouts, float]:
        """Return :meth:`attempt_timeouts` and :meth:`call_deadline` of ``policy`` together.

        What the executor reads per call: both plugin answers, asked once per
        service and configuration snapshot and kept in ``policy.call_limits``.
        """
        limits = policy.call_limits
        if limits is None:
            timeouts = self._first_answer("healkit_attempt_timeouts", policy, _timeouts)
            deadline = self._first_answer("healkit_call_deadline", policy, _seconds)
            limits = policy.call_limits = (
                CORE_TIMEOUTS if timeouts is None else timeouts,
                math.inf if deadline is None else deadline,
            )
        return limits

    def max_attempts(self, policy: ServicePolicy) -> int:
        """Return the most attempts a call to ``policy``'s service may make.

        What ``healkit_max_attempts`` answers: the first plugin's answer, else 1
        (no plugin retries); kept in ``policy.stash`` for the snapshot's
        lifetime. A plugin whose implementation raises, or answers something
        else than an int of at least 1, is logged and counted in
        ``plugin_errors``, and skipped.
        """
        limit = policy.stash.get(_MAX_ATTEMPTS)
        if limit is None:
            answer = self._first_answer("healkit_max_attempts", policy, _attempts)
            limit = policy.stash[_MAX_ATTEMPTS] = 1 if answer is None else answer
        return limit

    def _first_answer(
        self, hook: str, policy: ServicePolicy, accept: Callable[[object], T]
    ) -> T | None:
        """Return the first non-``None`` answer of a per-policy hook; report a wrong one."""
        for name, answer in call_each(
            self.plugin_manager, hook, {"policy": policy}, self._plugin_failed
        ):
            if answer is None:
                continue
            try:
                return accept(answer)
            except (TypeError, ValueError) as wrong:
                self._plugin_failed(name, hook, wrong)
        return None

    def emit(self, event: object) -> None:
        """Hand ``event`` to every ``healkit_event`` implementation (observers)."""
        call_each(self.plugin_manager, "healkit_event", {"event": event}, self._observer_failed)

    def _plugin_failed(self, plugin: str, hook: str, error: Exception) -> None:
        _log.plugin_failed(plugin, hook, error)
        self.plugin_errors[plugin] += 1

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the runtime (for the middleware and decorated call sites)."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the runtime: background tasks cancelled and awaited."""
        await self.stop()

    @property
    def started(self) -> bool:
        """Whether :meth:`start` ran and :meth:`stop` did not yet."""
        return self._started

    async def start(self) -> None:
        """Load remote configuration, start watching it, start plugin background work.

        Raises:
            ConfigError: the source's current document is invalid (for a source of
                parts such as etcd: no part of it is valid).

        """
        if self._started:
            return
        source = self._source
        if isinstance(source, PartialConfigSource):
            await source.load_into(self)  # starts with every part that is valid
        elif not isinstance(source, InMemorySource | FileSource):
            raw = await source.load()
            config, kept = await self._validate_off_loop(raw, source.origin)
            self._install(config, kept, origin=source.origin, configure=True)
        self._started = True
        if not isinstance(source, InMemorySource):
            self.start_background(f"config-watch {source.origin}", lambda: source.watch(self))
        try:
            call_each(
                self.plugin_manager, "healkit_startup", {"runtime": self}, _raise_plugin_error
            )
        except PluginError:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Cancel and await every background task, then run plugin shutdown hooks.

        Never raises for a plugin: a shutdown hook that fails or takes longer
        than 5 s, and a task that ignores cancellation, are logged.
        """
        self.repeats.flush(self.clock.now())  # no count of repeated failures is lost
        if not self._started:
            return
        self._started = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT)
            for task in stuck:
                _log.background_failed(task.get_name(), TimeoutError("ignored cancellation"))
        shutdowns = call_each(
            self.plugin_manager, "healkit_shutdown", {"runtime": self}, self._plugin_failed
        )
        for plugin, result in shutdowns:
            if isinstance(result, Awaitable):
                try:
                    await asyncio.wait_for(_as_coroutine(result), SHUTDOWN_TIMEOUT)
                except Exception as error:  # noqa: BLE001 - reported with the plugin's name
                    self._plugin_failed(plugin, "healkit_shutdown", error)

    def start_background(
        self, name: str, function: Callable[[], Coroutine[Any, Any, None]]
    ) -> asyncio.Task[None]:
        """Run ``function()`` as a task owned by this runtime until :meth:`stop`.

        A task that fails is logged (``healkit.background_task_failed``); it is
        not restarted. It runs in a context of its own (``contextvars.Context()``),
        not in that of whoever started the runtime: a request's context variables
        (a trace's span, a tenant, an inbound deadline) neither outlive the
        request in it nor reach what the task does (probes, watches).
        """
        if not self._started:
            raise PluginError(name, "start_background", RuntimeError("the runtime is not started"))
        context = contextvars.Context()  # the callback's too: it would copy the caller's
        task = asyncio.get_running_loop().create_task(
            function(), name=f"healkit: {name}", context=context
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done, context=context)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            _log.background_failed(task.get_name(), error)

    @property
    def background_tasks(self) -> frozenset[asyncio.Task[None]]:
        """The background tasks still running."""
        return frozenset(self._tasks)

    def activate(self) -> contextvars.Token[Runtime | None]:
        """Make this the runtime of ``@resilient`` call sites in the current context."""
        return _current.set(self)

    @staticmethod
    def deactivate(token: contextvars.Token[Runtime | None]) -> None:
        """Undo :meth:`activate`."""
        _current.reset(token)


def config_sections(pm: PluginManager) -> tuple[ConfigSection[Any], ...]:
    """Return the config sections the plugins of ``pm`` contribute.

    Raises:
        ConfigError: two plugins declare the same section.
        PluginError: a plugin's ``healkit_config_sections`` crashed.

    """
    sections: dict[str, ConfigSection[Any]] = {}
    for _, group in call_each(pm, "healkit_config_sections", {}, _raise_plugin_error):
        for section in group:
            if section.name in sections:
                issue = ConfigIssue(f"$.{section.name}", "two plugins declare this section")
                raise ConfigError([issue], origin="plugins")
            sections[section.name] = section
    return tuple(sections.values())


def _prepared(  # noqa: PLR0913 - what one validation needs, passed to a worker thread
    pm: PluginManager,
    raw: object,
    sections: tuple[ConfigSection[Any], ...],
    *,
    origin: str,
    previous: HealkitConfig | None,
    failures: list[tuple[str, str, Exception]],
) -> tuple[HealkitConfig, object]:
    """Validate ``raw`` against ``previous``; let the plugins prepare the snapshot.

    Runs in a worker thread for a source's document: it touches nothing but the
    new snapshot. The plugins that fail ``healkit_prepare`` are added to
    ``failures``, to be reported on the event loop.

    Returns:
        The snapshot, and what the runtime keeps of ``raw``: its compact form
        (:func:`~healkit._config.compact.compacted`), which is also what is
        validated, one service decoded at a time.

    Raises:
        ConfigError: the document is invalid.

    """
    compact = compacted(raw)
    config = build_config(compact, sections, origin=origin, previous=previous)
    arguments = {"config": config, "previous": previous}
    call_each(pm, "healkit_prepare", arguments, lambda *failure: failures.append(failure))
    return config, compact


def _raise_plugin_error(plugin: str, hook: str, error: Exception) -> None:
    raise PluginError(plugin, hook, error) from error


def current_runtime() -> Runtime | None:
    """Return the runtime activated in this context (by an entered Client), if any."""
    return _current.get()


_default: list[Runtime] = []


def runtime_or_build(  # noqa: PLR0913 - the options of every entry point that builds a runtime
    runtime: Runtime | None,
    *,
    config: ConfigInput,
    plugins: Iterable[object],
    block_plugins: Iterable[str],
    entry_points: bool,
    clock: Clock,
) -> Runtime:
    """Return ``runtime`` to share, or a new one built from the options.

    Raises:
        TypeError: both a runtime and options to build one were given.

    """
    if runtime is None:
        return Runtime(
            config=config,
            plugins=plugins,
            block_plugins=block_plugins,
            entry_points=entry_points,
            clock=clock,
        )
    if (
        config is not None
        or plugins
        or block_plugins
        or not entry_points
        or clock is not SYSTEM_CLOCK
    ):
        raise TypeError("pass either runtime= or the options to build one, not both")
    return runtime


def default_runtime() -> Runtime:
    """Return the process-wide runtime of ``@resilient`` call sites outside any Client.

    Created on first use with the entry-point plugins and the default
    configuration; configure it with ``default_runtime().apply(document)``.
    """
    if not _default:
        _default.append(Runtime())
    return _default[0]


async def _as_coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable


def _as_source(config: ConfigInput) -> ConfigSource:
    if config is None:
        return InMemorySource()
    if isinstance(config, ConfigSource):
        return config
    if isinstance(config, str | os.PathLike):
        return FileSource(config)
    if isinstance(config, Mapping):
        return InMemorySource(config)
    raise TypeError(
        f"config must be a mapping, a path or a ConfigSource, not {type(config).__name__}"
    )
