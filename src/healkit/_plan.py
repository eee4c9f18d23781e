"""The compiled call plan: the per-call hooks without pluggy's generic dispatch.

pluggy's hook calling walks the implementations, builds keyword arguments and
checks wrappers on every call (~7 µs for five implementations); the hot path
cannot pay that per attempt. A :class:`CallPlan` is built from
``hook.get_hookimpls()`` when the runtime starts, when a plugin is registered
and when what the plugins leave out changes (``Runtime.refresh_plan``): a
tuple of plain functions per hook, in exactly the order pluggy calls them
(reversed registration order, ``tryfirst`` first, ``trylast`` last), with
pluggy's result semantics: all non-``None`` results in order, or the first
non-``None`` for ``firstresult`` hooks. ``tests/test_plan.py`` proves the
equivalence against pluggy itself.

It adds the error policy of the contract: a deliberate :class:`HealkitError`
from a decision hook passes through; any other exception becomes a
:class:`PluginError` naming the plugin; an observer plugin's exception is
reported to the ``on_observer_error`` callback and never fails the call.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import pluggy

from healkit._context import Fallback, RetryDecision
from healkit._errors import HealkitError, PluginError

if TYPE_CHECKING:
    from healkit._context import AttemptContext, CallContext
    from healkit._outcome import Outcome
    from healkit._plugins import PluginManager
    from healkit._response import Response

__all__ = ["PER_CALL_HOOKS", "CallPlan", "CompiledHook", "compile_hook"]

PER_CALL_HOOKS: Final = (
    "healkit_route",
    "healkit_pre_request",
    "healkit_admit",
    "healkit_post_response",
    "healkit_on_error",
    "healkit_fallback",
    "healkit_call_end",
    "healkit_call_abandoned",
    "healkit_hedge_delay",
    "healkit_hedge",
    "healkit_attempt_cancelled",
)

ObserverErrorHandler = Callable[[str, str, Exception], None]
D = TypeVar("D")


@final
class CompiledHook:
    """One hook's implementations, ready to call in pluggy's order.

    Attributes:
        name: the hook name.
        functions: the implementations, each adapted to take the spec's
            arguments positionally, in call order.
        plugins: the registered name of each implementation's plugin.
        observers: whether each implementation belongs to an observer plugin.
        firstresult: whether the hook stops at the first non-``None`` result.
        indexed: ``(index, function)`` for each implementation, in call order:
            what the plan loops over (no ``enumerate`` object per call).

    """

    __slots__ = ("firstresult", "functions", "indexed", "name", "observers", "plugins")

    def __init__(
        self,
        name: str,
        functions: tuple[Callable[..., Any], ...],
        plugins: tuple[str, ...],
        observers: tuple[bool, ...],
        *,
        firstresult: bool,
    ) -> None:
        self.name = name
        self.functions = functions
        self.indexed = tuple(enumerate(functions))
        self.plugins = plugins
        self.observers = observers
        self.firstresult = firstresult

    def __len__(self) -> int:
        return len(self.functions)

    def call(self, *args: object) -> list[Any]:
        """Call like pluggy would, without error policy (used for the proof of equivalence)."""
        results: list[Any] = []
        for function in self.functions:
            result = function(*args)
            if result is not None:
                results.append(result)
                if self.firstresult:
                    break
        return results


def compile_hook(pm: PluginManager, name: str, idle: Collection[str] = frozenset()) -> CompiledHook:
    """Compile one hook of ``pm`` into a :class:`CompiledHook`, leaving out the ``idle`` plugins.

    Wrappers never get here: the plugin manager refuses them on per-call hooks
    when a plugin is registered.

    Raises:
        PluginError: ``pm`` has no hook of that name.

    """
    caller: pluggy.HookCaller = getattr(pm.hook, name)
    spec = caller.spec
    if spec is None:
        raise PluginError("healkit", name, LookupError(f"no hook specification named {name}"))
    spec_args = tuple(spec.argnames)
    functions: list[Callable[..., Any]] = []
    plugins: list[str] = []
    observers: list[bool] = []
    # pluggy calls the implementation list from its end to its start.
    for impl in reversed(caller.get_hookimpls()):
        if impl.plugin_name in idle:
            continue
        functions.append(_positional(impl.function, tuple(impl.argnames), spec_args))
        plugins.append(impl.plugin_name)
        observers.append(pm.is_observer(impl.plugin_name))
    firstresult = bool(spec.opts.get("firstresult", False))
    return CompiledHook(
        name, tuple(functions), tuple(plugins), tuple(observers), firstresult=firstresult
    )


def _positional(
    function: Callable[..., Any], argnames: tuple[str, ...], spec_args: tuple[str, ...]
) -> Callable[..., Any]:
    """Adapt an implementation that takes a subset (or another order) of the spec's arguments."""
    if argnames == spec_args:
        return function
    indexes = tuple(spec_args.index(a) for a in argnames)

    def adapted(*args: object) -> Any:  # noqa: ANN401 - returns what the implementation returns
        return function(*[args[i] for i in indexes])

    return adapted


@final
class CallPlan:
    """The per-call hooks of one plugin set, compiled, with healkit's error policy.

    Attributes:
        idle: the plugins left out because they have nothing to do per call
            under the configuration in force (``healkit_idle``).
        idle_hooks: ``(plugin, hook)`` pairs left out besides: the hooks a
            plugin said it has nothing to do in (``healkit_idle_hooks``).

    """

    __slots__ = (
        "_admit",
        "_attempt_cancelled",
        "_call_abandoned",
        "_call_end",
        "_fallback",
        "_hedge",
        "_hedge_delay",
        "_on_error",
        "_on_fallback_failed",
        "_on_observer_error",
        "_post_response",
        "_pre_request",
        "_route",
        "has_admit",
        "has_call_abandoned",
        "has_call_end",
        "has_fallback",
        "has_hedge_delay",
        "has_post_response",
        "has_pre_request",
        "has_route",
        "idle",
        "idle_hooks",
    )

    def __init__(
        self,
        pm: PluginManager,
        on_observer_error: ObserverErrorHandler,
        on_fallback_failed: Callable[[str, HealkitError], None],
        *,
        idle: Collection[str] = frozenset(),
        idle_hooks: Collection[tuple[str, str]] = frozenset(),
    ) -> None:
        self.idle = frozenset(idle)
        self.idle_hooks = frozenset(idle_hooks)

        def compiled(hook: str) -> CompiledHook:
            left_out = self.idle.union(p for p, h in self.idle_hooks if h == hook)
            return compile_hook(pm, hook, left_out)

        self._route = compiled("healkit_route")
        self._pre_request = compiled("healkit_pre_request")
        self._admit = compiled("healkit_admit")
        self._post_response = compiled("healkit_post_response")
        self._on_error = compiled("healkit_on_error")
        self._fallback = compiled("healkit_fallback")
        self._call_end = compiled("healkit_call_end")
        self._call_abandoned = compiled("healkit_call_abandoned")
        self._hedge_delay = compiled("healkit_hedge_delay")
        self._hedge = compiled("healkit_hedge")
        self._attempt_cancelled = compiled("healkit_attempt_cancelled")
        self._on_observer_error = on_observer_error
        self._on_fallback_failed = on_fallback_failed
        # Hooks nobody implements are skipped by the executor without a call.
        self.has_route = bool(self._route.functions)
        self.has_pre_request = bool(self._pre_request.functions)
        self.has_admit = bool(self._admit.functions)
        self.has_post_response = bool(self._post_response.functions)
        self.has_fallback = bool(self._fallback.functions)
        self.has_call_end = bool(self._call_end.functions)
        self.has_call_abandoned = bool(self._call_abandoned.functions)
        self.has_hedge_delay = bool(self._hedge_delay.functions)

    def hooks(self) -> Sequence[CompiledHook]:
        """Return the compiled hooks (for inspection and tests)."""
        return (
            self._route,
            self._pre_request,
            self._admit,
            self._post_response,
            self._on_error,
            self._fallback,
            self._call_end,
            self._call_abandoned,
            self._hedge_delay,
            self._hedge,
            self._attempt_cancelled,
        )

    def _failed(self, hook: CompiledHook, index: int, exc: Exception) -> None:
        plugin = hook.plugins[index]
        if hook.observers[index]:
            self._on_observer_error(plugin, hook.name, exc)
            return
        if isinstance(exc, PluginError):
            raise exc  # another plugin's crash, met through a hook: it names that plugin
        raise PluginError(plugin, hook.name, exc) from exc

    def route(self, call: CallContext, attempt: AttemptContext) -> str | None:
        """Run ``healkit_route``; return the first endpoint a decision plugin chose."""
        hook = self._route
        for index, function in hook.indexed:
            try:
                chosen = function(call, attempt)
            except Exception as exc:  # noqa: BLE001 - the error policy of the contract
                self._failed(hook, index, exc)
                continue
            if chosen is None or hook.observers[index]:
                continue
            if not isinstance(chosen, str):
                wrong = TypeError(f"returned {type(chosen).__name__}, not an endpoint (str)")
                self._failed(hook, index, wrong)
                continue
            return chosen
        return None

    def pre_request(self, call: CallContext, attempt: AttemptContext) -> HealkitError | None:
        """Run ``healkit_pre_request``; return the first refusal of a decision plugin.

        A decision plugin refuses the attempt by returning a HealkitError (or
        by raising one: it propagates); the implementations after it do not run.
        """
        hook = self._pre_request
        for index, function in hook.indexed:
            try:
                refusal = function(call, attempt)
            except HealkitError as raised:
                if not hook.observers[index]:
                    raise
                self._failed(hook, index, raised)  # an observer cannot refuse: its bug
                continue
            except Exception as exc:  # noqa: BLE001 - the error policy of the contract
                self._failed(hook, index, exc)
                continue
            # Other results are ignored, as they always were; an observer cannot refuse.
            if (
                refusal is not None
                and isinstance(refusal, HealkitError)
                and not hook.observers[index]
            ):
                return refusal
        return None

    async def admit(self, call: CallContext, attempt: AttemptContext) -> HealkitError | None:
        """Run ``healkit_admit``, awaiting each wait; return the first refusal of a decision plugin.

        Called only when some plugin implements the hook (``has_admit``). An
        implementation's error is handled as in ``pre_request``.
        """
        hook = self._admit
        for index, function in hook.indexed:
            try:
                refusal = function(call, attempt)
                if inspect.isawaitable(refusal):
                    refusal = await _await(refusal)
            except HealkitError as raised:
                if not hook.observers[index]:
                    raise
                self._failed(hook, index, raised)
                continue
            except Exception as exc:  # noqa: BLE001 - the error policy of the contract
                self._failed(hook, index, exc)
                continue
            if refusal is None or hook.observers[index]:
                continue
            if not isinstance(refusal, HealkitError):
                wrong = TypeError(f"returned {type(refusal).__name__}, not a HealkitError")
                self._failed(hook, index, wrong)
                continue
            return refusal
        return None

    def post_response(
        self, call: CallContext, attempt: AttemptContext, response: Response | None
    ) -> HealkitError | None:
        """Run ``healkit_post_response``; return the first failure declared."""
        # Spelled out rather than shared with on_error through *args: this runs
        # on every successful attempt, and packing and unpacking the arguments
        # costs more than the calls themselves.
        hook = self._post_response
        decision: HealkitError | None = None
        for index, function in hook.indexed:
            try:
                result = function(call, attempt, response)
            except Exception as exc:  # noqa: BLE001 - the error policy of the contract
                self._failed(hook, index, exc)
                continue
            if result is not None and decision is None:
                decision = self._decision(hook, index, result, HealkitError)
        return decision

    def on_error(
        self, call: CallContext, attempt: AttemptContext, error: HealkitError
    ) -> RetryDecision | None:
        """Run ``healkit_on_error``; return the first decision proposed."""
        hook = self._on_error
        decision: RetryDecision | None = None
        for index, function in hook.indexed:
            try:
                result = function(call, attempt, error)
            except Exception as exc:  # noqa: BLE001 - the error policy of the contract
                self._failed(hook, index, exc)
                continue
            if result is not None and decision is None:
                decision = self._decision(hook, index, result, RetryDecision)
        return decision

    def _decision(self, hook: CompiledHook, index: int, result: object, kind: type[D]) -> D | None:
        """Return an implementation's non-None result if it is a decision, else ``None``.

        An observer's result is ignored; a decision plugin's result of the wrong
        type is reported as that plugin's error.
        """
        if hook.observers[index]:
            return None
        if not isinstance(result, kind):
            wrong = TypeError(f"returned {type(result).__name__}, not a {kind.__name__}")
            self._failed(hook, index, wrong)
            return None
        return result

    async def fallback(self, call: CallContext, error: HealkitError) -> Fallback | None:
        """Run ``healkit_fallback`` until a decision plugin offers a substitute."""
        hook = self._fallback
        for index, function in hook.indexed:
            try:
                result = function(call, error)
                if inspect.isawaitable(result):
                    result = await _await(result)
            except HealkitError as failed:
                # A fallback that itself failed (the fallback endpoint is down too)
                # is not a crash: it is logged, and the next implementation may help.
                self._on_fallback_failed(hook.plugins[index], failed)
                continue
            except Exception as exc:  # noqa: BLE001 - the error policy of the contract
                self._failed(hook, index, exc)
                continue
            if result is None or hook.observers[index]:
                continue
            if not isinstance(result, Fallback):
                self._failed(
                    hook, index, TypeError(f"returned {type(result).__name__}, not a Fallback")
                )
                continue
            return result
        return None

    def hedge_delay(self, call: CallContext, attempt: AttemptContext) -> float | None:
        """Run ``healkit_hedge_delay``; return the first delay a decision plugin gave.

        A delay that is not a positive, finite number of seconds is its plugin's error.
        """
        hook = self._hedge_delay
        for index, function in hook.indexed:
            try:
                delay = function(call, attempt)
            except Exception as exc:  # noqa: BLE001 - the error policy of the contract
                self._failed(hook, index, exc)
                continue
            if delay is None or hook.observers[index]:
                continue
            if (
                isinstance(delay, bool)
                or not isinstance(delay, int | float)
                or not 0 < delay < math.inf
            ):
                wrong = ValueError(f"returned {delay!r}, not a positive, finite delay in seconds")
                self._failed(hook, index, wrong)
                continue
            return float(delay)
        return None

    def hedge(self, call: CallContext, attempt: AttemptContext) -> bool:
        """Run ``healkit_hedge``; return ``False`` if a decision plugin declined the hedge."""
        hook = self._hedge
        for index, function in hook.indexed:
            try:
                allowed = function(call, attempt)
            except Exception as exc:  # noqa: BLE001 - the error policy of the contract
                self._failed(hook, index, exc)
                continue
            if allowed is None or hook.observers[index]:
                continue
            if not isinstance(allowed, bool):
                wrong = TypeError(f"returned {type(allowed).__name__}, not a bool")
                self._failed(hook, index, wrong)
                continue
            if not allowed:
                return False
        return True

    def attempt_cancelled(self, call: CallContext, attempt: AttemptContext) -> None:
        """Run ``healkit_attempt_cancelled``; every exception is an observer error here."""
        hook = self._attempt_cancelled
        for index, function in hook.indexed:
            try:
                function(call, attempt)
            except Exception as exc:  # noqa: BLE001 - releasing must never fail the call
                self._on_observer_error(hook.plugins[index], hook.name, exc)

    def crashed_late(self, crash: PluginError) -> None:
        """Report a decision plugin's crash that can no longer fail its call.

        A hedge race's loser that crashed while the winner's answer was being
        returned: it is logged and counted as an observer's error would be.
        """
        self._on_observer_error(crash.plugin, crash.hook, crash)

    def call_end(self, call: CallContext, outcome: Outcome, error: HealkitError | None) -> None:
        """Run ``healkit_call_end``; every exception is an observer error here."""
        hook = self._call_end
        for index, function in hook.indexed:
            try:
                function(call, outcome, error)
            except Exception as exc:  # noqa: BLE001 - observing must never fail a finished call
                self._on_observer_error(hook.plugins[index], hook.name, exc)

    def call_abandoned(self, call: CallContext, exception: BaseException) -> None:
        """Run ``healkit_call_abandoned``; every exception is an observer error here."""
        hook = self._call_abandoned
        for index, function in hook.indexed:
            try:
                function(call, exception)
            except Exception as exc:  # noqa: BLE001 - observing must never change how a call ends
                self._on_observer_error(hook.plugins[index], hook.name, exc)


async def _await(awaitable: Awaitable[Any]) -> Any:  # noqa: ANN401 - hook results are untyped
    return await awaitable
