"""``@healkit.resilient``: the same pipeline around any async call site."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Generic, ParamSpec, TypeVar, final

from healkit._context import AttemptContext, CallContext, Fallback
from healkit._errors import CallError, InvalidRequestError
from healkit._executor import Passthrough, execute
from healkit._outcome import Outcome
from healkit._runtime import Runtime, current_runtime, default_runtime

__all__ = ["resilient"]

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_FAILURES: Final[tuple[type[Exception], ...]] = (OSError, TimeoutError)


@final
class _FunctionTransport(Generic[T]):
    """One attempt = one call of the decorated function."""

    __slots__ = ("_args", "_failures", "_function", "_kwargs")

    concurrent = True  # each attempt is a call of its own

    def __init__(
        self,
        function: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        failures: tuple[type[Exception], ...],
    ) -> None:
        self._function = function
        self._args = args
        self._kwargs = kwargs
        self._failures = failures

    async def send(self, call: CallContext, attempt: AttemptContext) -> tuple[T, None]:
        del call, attempt
        try:
            return await self._function(*self._args, **self._kwargs), None
        except self._failures as exc:
            raise CallError(exc) from exc
        except Exception as exc:  # noqa: BLE001 - not a failure: hand it back untouched
            raise Passthrough(exc) from None

    def discard(self, result: T) -> None:
        del result

    def accept(self, fallback: Fallback) -> T:
        # The return type of the function is not checked at run time: a fallback
        # plugin for a decorated call site answers with the site's own type.
        return fallback.value  # type: ignore[return-value]

    def finish(self, result: T, outcome: Callable[[], Outcome]) -> T:
        del outcome
        return result


def resilient(
    *,
    service: str,
    failures: tuple[type[Exception], ...] = DEFAULT_FAILURES,
    idempotent: bool = False,
    deadline: float | None = None,
    runtime: Runtime | None = None,
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Run an async function through healkit's pipeline, under ``service``'s policy.

    Args:
        service: the service whose policy applies (timeouts, retry, breaker, fallback).
        failures: exception types that count as a failed attempt (counted by
            breakers, ended by a fallback, retried if ``idempotent``); by
            default ``OSError`` and ``TimeoutError``, the failures of I/O.
            Other exceptions propagate unchanged at once. When the call fails
            for good, :class:`healkit.CallError` is raised with the last such
            exception as ``error`` and ``__cause__``.
        idempotent: whether calling the function again is safe. ``False`` by
            default: a function that may have run is never repeated, as a POST
            is not, unless its author declares ``idempotent=True`` (the retry
            plugin repeats only idempotent calls; a retry policy with
            ``retry_non_idempotent`` still does).
        deadline: seconds within which the whole call must end, all attempts
            and backoff included.
        runtime: the runtime to use; by default the one of the enclosing
            ``async with healkit.Client()``, else :func:`healkit.default_runtime`.

    The decorated function keeps its signature (``ParamSpec``).

    Raises:
        TypeError: ``failures`` holds something that is not an Exception subclass
            (cancellation must never count as a failure).

    """
    for kind in failures:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise TypeError(f"failures must be Exception subclasses, got {kind!r}")
    if deadline is not None and not (deadline > 0 and math.isfinite(deadline)):
        raise InvalidRequestError(
            f"deadline must be a finite number of seconds > 0, got {deadline!r}"
        )

    def decorate(
        function: Callable[P, Coroutine[Any, Any, T]],
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"@resilient needs an async function, got {function!r}")
        name = function.__qualname__

        @functools.wraps(function)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            active = runtime or current_runtime() or default_runtime()
            config = active.config
            clock = active.clock
            now = clock.now()
            call = CallContext(  # by position: see CallContext.__init__
                service,
                "function",
                "CALL",
                name,
                config,
                config.policy(service),
                clock,
                None,  # headers
                idempotent,
                True,  # noqa: FBT003 - replayable
                now,
                now + deadline if deadline is not None else math.inf,
                False,  # noqa: FBT003 - routable
            )
            transport = _FunctionTransport(function, args, kwargs, failures)
            return await execute(active, call, transport, None)

        return wrapper

    return decorate
