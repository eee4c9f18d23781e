"""The compiled call plan calls implementations exactly as pluggy does."""

from __future__ import annotations

from typing import Any

import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import healkit
from healkit._plan import PER_CALL_HOOKS, compile_hook
from healkit._plugins import BUILTIN_PLUGINS, create_plugin_manager

BUILTINS = [plugin().healkit_name for plugin in BUILTIN_PLUGINS]  # type: ignore[attr-defined]

HOOK_ARGS = {
    "healkit_route": ("call", "attempt"),
    "healkit_pre_request": ("call", "attempt"),
    "healkit_admit": ("call", "attempt"),
    "healkit_post_response": ("call", "attempt", "response"),
    "healkit_on_error": ("call", "attempt", "error"),
    "healkit_fallback": ("call", "error"),
    "healkit_call_end": ("call", "outcome", "error"),
    "healkit_call_abandoned": ("call", "exception"),
    "healkit_hedge_delay": ("call", "attempt"),
    "healkit_hedge": ("call", "attempt"),
    "healkit_attempt_cancelled": ("call", "attempt"),
}

# One implementation: (hook, ordering, result or None, argument subset taken)
impl_strategy = st.tuples(
    st.sampled_from(sorted(HOOK_ARGS)),
    st.sampled_from(["plain", "tryfirst", "trylast"]),
    st.one_of(st.none(), st.integers(0, 1000)),
    st.booleans(),
)


def make_plugin(index: int, impls: list[tuple[str, str, int | None, bool]]) -> object:
    """A plugin class with one method per hook it implements."""
    namespace: dict[str, Any] = {}
    for hook, order, result, subset in impls:
        args = HOOK_ARGS[hook]
        taken = args[:1] if subset else args
        # pluggy reads argument names from the signature: build one with the names.
        source = f"def {hook}(self, {', '.join(taken)}):\n    return _result\n"
        scope: dict[str, Any] = {"_result": result}
        exec(source, scope)  # noqa: S102 - builds a signature for pluggy to read
        opts = {"tryfirst": order == "tryfirst", "trylast": order == "trylast"}
        namespace[hook] = healkit.hookimpl(**opts)(scope[hook])
    return type(f"Plugin{index}", (), namespace)()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(impl_strategy, max_size=5, unique_by=lambda i: i[0]), max_size=6))
def test_plan_matches_pluggy(plugins_impls: list[list[tuple[str, str, int | None, bool]]]) -> None:
    plugins = [make_plugin(i, impls) for i, impls in enumerate(plugins_impls)]
    # The built-in plugins need real contexts; these tests call hooks with stand-ins.
    pm = create_plugin_manager(plugins=plugins, entry_points=False, block=BUILTINS)
    for hook in PER_CALL_HOOKS:
        compiled = compile_hook(pm, hook)
        values = {name: object() for name in HOOK_ARGS[hook]}
        expected = getattr(pm.hook, hook)(**values)
        got = compiled.call(*values.values())
        if compiled.firstresult:
            assert (got[0] if got else None) == expected
        else:
            assert got == expected


def test_plugin_order_is_pluggy_order() -> None:
    calls: list[str] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.healkit_name = name

    def plugin(name: str, **opts: bool) -> object:
        def healkit_pre_request(self: Any, call: Any, attempt: Any) -> None:
            calls.append(name)

        cls = type(
            name,
            (Recorder,),
            {"healkit_pre_request": healkit.hookimpl(**opts)(healkit_pre_request)},
        )
        return cls(name)

    plugins = [plugin("a"), plugin("b", trylast=True), plugin("c"), plugin("d", tryfirst=True)]
    # The built-in plugins need real contexts; these tests call hooks with stand-ins.
    pm = create_plugin_manager(plugins=plugins, entry_points=False, block=BUILTINS)
    compile_hook(pm, "healkit_pre_request").call(None, None)
    assert calls == ["d", "c", "a", "b"]


def test_wrappers_are_refused_on_per_call_hooks() -> None:
    class Wrapper:
        @healkit.hookimpl(wrapper=True)
        def healkit_pre_request(self, call: Any, attempt: Any) -> Any:
            return (yield)

    with pytest.raises(healkit.PluginError, match="wrappers are not supported") as caught:
        create_plugin_manager(plugins=[Wrapper()], entry_points=False)
    assert caught.value.hook == "register"
    # A plugin registered on the manager directly is refused too, and left out.
    pm = create_plugin_manager(entry_points=False)
    plugin = Wrapper()
    with pytest.raises(healkit.PluginError, match="wrappers are not supported"):
        pm.register(plugin)
    assert not pm.is_registered(plugin)


def test_misspelled_hooks_are_refused_at_registration() -> None:
    class Typo:
        @healkit.hookimpl
        def healkit_pre_requets(self) -> None:  # a typo of the hook name
            """Never called."""

    with pytest.raises(healkit.PluginError, match="healkit_pre_requets") as caught:
        create_plugin_manager(plugins=[Typo()], entry_points=False)
    assert isinstance(caught.value.__cause__, pluggy.PluginValidationError)


class SometimesIdle:
    """Has nothing to do per call unless the document says ``busy``."""

    healkit_name = "sometimes-idle"

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken

    @healkit.hookimpl
    def healkit_idle(self, config: healkit.HealkitConfig) -> bool:
        if self.broken:
            raise RuntimeError("cannot tell")
        return "busy" not in config.services

    @healkit.hookimpl
    def healkit_pre_request(self, attempt: healkit.AttemptContext) -> None:
        attempt.headers["X-Seen"] = "1"


def test_an_idle_plugin_is_left_out_of_the_plan_until_the_config_needs_it() -> None:
    runtime = healkit.Runtime(plugins=[SometimesIdle()], entry_points=False, block_plugins=BUILTINS)
    assert runtime._plan.idle == {"sometimes-idle"}
    assert not runtime._plan.has_pre_request
    runtime.apply({"services": {"busy": {}}}, origin="test")
    assert runtime._plan.idle == frozenset()
    assert runtime._plan.has_pre_request


def test_a_plugin_whose_idle_check_fails_stays_in_the_plan() -> None:
    runtime = healkit.Runtime(
        plugins=[SometimesIdle(broken=True)], entry_points=False, block_plugins=BUILTINS
    )
    assert runtime._plan.idle == frozenset()
    assert runtime._plan.has_pre_request
    assert runtime.plugin_errors["sometimes-idle"] >= 1


class QuietObserver:
    """Names the hooks it has nothing to do in; its answer can change outside the config."""

    healkit_name = "quiet-observer"
    healkit_observer = True

    def __init__(self, answer: object = ("healkit_call_end",)) -> None:
        self.answer = answer
        self.seen: list[str] = []

    @healkit.hookimpl
    def healkit_idle_hooks(self, config: healkit.HealkitConfig) -> object:
        del config
        return self.answer

    @healkit.hookimpl
    def healkit_pre_request(self, attempt: healkit.AttemptContext) -> None:
        self.seen.append(f"pre_request {attempt.number}")

    @healkit.hookimpl
    def healkit_call_end(self, outcome: healkit.Outcome) -> None:
        self.seen.append(f"call_end {outcome.path}")


async def _call_once(runtime: healkit.Runtime) -> None:
    @healkit.resilient(service="svc", runtime=runtime)
    async def work() -> int:
        return 1

    assert await work() == 1


@pytest.mark.anyio
async def test_hooks_a_plugin_names_idle_are_left_out_and_its_others_stay() -> None:
    plugin = QuietObserver()
    runtime = healkit.Runtime(plugins=[plugin], entry_points=False, block_plugins=BUILTINS)
    assert runtime._plan.idle_hooks == {("quiet-observer", "healkit_call_end")}
    assert runtime._plan.idle == frozenset()
    assert runtime._plan.has_pre_request
    assert not runtime._plan.has_call_end
    await _call_once(runtime)
    assert plugin.seen == ["pre_request 1"]
    # Its answer changes for a reason of its own: it asks for the plan again.
    plugin.answer = ()
    runtime.refresh_plan()
    assert runtime._plan.idle_hooks == frozenset()
    await _call_once(runtime)
    assert plugin.seen == ["pre_request 1", "pre_request 1", "call_end primary"]


@pytest.mark.parametrize(
    "answer",
    [("healkit_call_ends",), "healkit_call_end", ("healkit_configure",), 42],
    ids=["misspelled", "a string, not names", "not a per-call hook", "not iterable"],
)
def test_a_plugin_naming_hooks_wrongly_stays_in_the_plan_whole(answer: object) -> None:
    runtime = healkit.Runtime(
        plugins=[QuietObserver(answer)], entry_points=False, block_plugins=BUILTINS
    )
    assert runtime._plan.idle_hooks == frozenset()
    assert runtime._plan.has_call_end
    assert runtime.plugin_errors["quiet-observer"] >= 1
