"""What routing asks of the other plugins: hooks between plugins, called directly.

The router compiles the hooks it asks (``healkit_endpoint_available``,
``healkit_circuit_state``, ``healkit_tls_context``) with ``compile_hook`` when it
is configured (plugins change only through ``runtime.register``, which
configures again) and calls the implementations here, turning an
implementation's exception or wrong answer into a :class:`PluginError` naming
that plugin. Outside a call (the probes, the fleet view, the read API) such an
error is logged and counted (:func:`count_failure`), not raised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from healkit._errors import PluginError
from healkit._log import plugin_failed

if TYPE_CHECKING:
    from healkit._plan import CompiledHook
    from healkit._runtime import Runtime

__all__ = ["admitted", "count_failure", "first_answer"]

_T = TypeVar("_T")


def admitted(gates: CompiledHook, service: str, endpoint: str) -> bool:
    """Whether no decision plugin says it would refuse an attempt to ``endpoint`` now."""
    for index, gate in gates.indexed:
        try:
            answer = gate(service, endpoint)
        except Exception as exc:
            raise PluginError(gates.plugins[index], gates.name, exc) from exc
        if gates.observers[index] or answer is None or answer is True:
            continue
        if answer is not False:  # 0 or "no" must not pass for "no objection"
            wrong = TypeError(f"returned {type(answer).__name__}, not a bool or None")
            raise PluginError(gates.plugins[index], gates.name, wrong)
        return False
    return True


def first_answer(
    hook: CompiledHook,
    kind: type[_T],
    *args: object,
    refuse: Callable[[_T], str | None] | None = None,
) -> _T | None:
    """Return the first answer of a decision plugin to a ``firstresult`` ``hook``.

    ``refuse`` says what is wrong with an answer of the right type (``None``: nothing).

    Raises:
        PluginError: an implementation raised, answered with another type than
            ``kind``, or with an answer ``refuse`` finds wrong.

    """
    for index, function in hook.indexed:
        try:
            answer = function(*args)
        except Exception as exc:
            raise PluginError(hook.plugins[index], hook.name, exc) from exc
        if answer is None or hook.observers[index]:
            continue
        if not isinstance(answer, kind):
            wrong = TypeError(f"returned {type(answer).__name__}, not a {kind.__name__}")
            raise PluginError(hook.plugins[index], hook.name, wrong)
        if refuse is not None and (reason := refuse(answer)) is not None:
            raise PluginError(hook.plugins[index], hook.name, ValueError(reason))
        return answer
    return None


def count_failure(runtime: Runtime | None, error: PluginError) -> None:
    """Log a plugin's failure in a hook routing asks outside a call, and count it."""
    plugin_failed(error.plugin, error.hook, error)
    if runtime is not None:
        runtime.plugin_errors[error.plugin] += 1
