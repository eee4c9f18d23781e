"""The breaker state machine: pure, synchronous, with the clock passed in.

One :class:`Breaker` guards one key (a service endpoint, or a service). It
knows nothing of healkit's calls::

    closed ──trip──▶ open ──open duration elapsed──▶ half_open ──N successes──▶ closed
                      ▲                                  │
                      └──────────── a probe fails ───────┘

While :attr:`Breaker.admits` is true (closed, forced closed, disabled) every
attempt may go ahead and nothing is kept per attempt: the caller reports the
outcome with :meth:`Breaker.record`, giving the time the attempt started, and
an outcome counts only if the attempt started at or after the breaker's last
transition (so a call admitted while closed that fails after the breaker
opened, closed and re-opened does not count against the new closed period).
Otherwise the caller asks :meth:`Breaker.try_probe` for one of the half-open
probe slots; a :class:`Probe` is reported with :meth:`Breaker.record_probe`, or
handed back without a verdict with :meth:`Breaker.release_probe`, and counts
only while it still holds its slot (a transition frees every slot).

Everything runs on the event loop thread; no method awaits, so no lock is
needed and none is held across an await.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final, final

from healkit_breaker._events import BreakerStatus, BreakerTransition, State, TransitionReason
from healkit_breaker._settings import BreakerSettings, Mode
from healkit_breaker._window import Window, new_window

__all__ = ["Breaker", "Notify", "Probe", "initial_state"]

Notify = Callable[[BreakerTransition], None]
"""Receives every transition, after the breaker is in its new state."""

# Beyond 2**64 the doubling is capped by open_duration_max anyway.
_MAX_DOUBLINGS: Final = 64
_ADMITTING: Final = frozenset({State.CLOSED, State.FORCED_CLOSED, State.DISABLED})
_COUNTING: Final = frozenset({State.CLOSED, State.FORCED_CLOSED})
_MODE_STATES: Final[dict[Mode, State]] = {
    "normal": State.CLOSED,
    "force_open": State.FORCED_OPEN,
    "force_closed": State.FORCED_CLOSED,
    "disabled": State.DISABLED,
}


def initial_state(mode: Mode) -> State:
    """Return the state a new breaker starts in under ``mode``."""
    return _MODE_STATES[mode]


@final
class Probe:
    """One of the half-open probe slots, held by one attempt.

    Attributes:
        breaker: the breaker whose slot it is.
        limit: returns the time by which the attempt must have ended. A probe
            still held after it is taken as abandoned (its caller was
            cancelled, or no hook saw its end) and its slot is freed.

    """

    __slots__ = ("breaker", "limit")

    def __init__(self, breaker: Breaker, limit: Callable[[], float]) -> None:
        self.breaker = breaker
        self.limit = limit

    def __repr__(self) -> str:
        return f"<Probe of {self.breaker!r}>"


@final
class Breaker:
    """One circuit breaker.

    Args:
        service: the service it belongs to (for events).
        endpoint: the endpoint it guards, ``None`` for the whole service.
        settings: its configuration.
        notify: called with each transition.
        now: the current time (a time window starts there).
        since: outcomes of attempts started before it are ignored (a breaker
            that replaces another one starts counting at the replacement).

    Attributes:
        state: the current state (an open breaker whose open duration has
            passed says ``OPEN`` until :meth:`try_probe`, :meth:`current`,
            :meth:`available` or :meth:`status` moves it to half-open).
        admits: whether every attempt may go ahead without a probe slot.
        since: the time of the last transition (``-inf`` before the first).
        failure_statuses: response statuses that count as failures.
        slow_threshold: seconds beyond which an attempt is slow.

    """

    __slots__ = (
        "_consecutive",
        "_counting",
        "_lazy",
        "_notify",
        "_open_until",
        "_probe_calls",
        "_probe_failures",
        "_probe_slow",
        "_probes",
        "_refused_until",
        "_trips",
        "_window",
        "admits",
        "endpoint",
        "failure_statuses",
        "service",
        "settings",
        "since",
        "slow_threshold",
        "state",
    )

    def __init__(  # noqa: PLR0913 - the key, the settings, the listener; times keyword-only
        self,
        service: str,
        endpoint: str | None,
        settings: BreakerSettings,
        notify: Notify,
        *,
        now: float,
        since: float = -math.inf,
    ) -> None:
        self.service = service
        self.endpoint = endpoint
        self._notify = notify
        self._window: Window = new_window(settings.window, settings.size, now)
        self._consecutive = 0
        self._trips = 0
        self._open_until = math.inf
        self._probes: list[Probe] = []
        self._probe_calls = self._probe_failures = self._probe_slow = 0
        self.since = since
        self._enter(initial_state(settings.mode))
        self._use(settings)

    def __repr__(self) -> str:
        where = f"{self.service} {self.endpoint}" if self.endpoint else self.service
        return f"<Breaker {where} {self.state.value}>"

    def _use(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.failure_statuses = frozenset(settings.failure_statuses)
        self.slow_threshold = settings.slow_call_threshold
        # A count window only loses outcomes to newer ones, so a fast success can
        # only lower the rates, except when it brings the window to minimum_calls.
        self._lazy = settings.window == "count"

    def _enter(self, state: State) -> None:
        self.state = state
        self.admits = state in _ADMITTING
        self._counting = state in _COUNTING
        # What refuses() and retry_at() answer, settled here rather than by
        # comparing states on every refused call.
        if state is State.FORCED_OPEN:
            self._refused_until = math.inf
        elif state is State.OPEN:
            self._refused_until = self._open_until
        else:
            self._refused_until = -math.inf

    # -- reading ----------------------------------------------------------------------

    @property
    def window_kind(self) -> str:
        """``"count"`` or ``"time"``."""
        return self._window.kind

    def current(self, now: float) -> State:
        """Return the state at ``now``, moving a due open breaker to half-open first."""
        self._refresh(now)
        return self.state

    def available(self, now: float) -> bool:
        """Whether an attempt would be admitted at ``now`` (no slot is taken)."""
        self._refresh(now)
        if self.admits:
            return True
        if self.state is State.HALF_OPEN:
            self._drop_abandoned(now)
            return len(self._probes) < self.settings.half_open_probes
        return False

    def refuses(self, now: float) -> bool:
        """Whether an attempt at ``now`` is refused without looking for a probe slot.

        True while open (its open duration not over) or forced open; then
        :meth:`try_probe` would return ``None`` too.
        """
        return now < self._refused_until

    def retry_at(self, now: float) -> float:
        """When an attempt refused at ``now`` may be admitted.

        Open: when the open duration ends. Forced open: ``math.inf``.
        Otherwise ``now``: a half-open breaker frees a probe slot, or closes,
        as soon as a probe ends, which may be at any moment.
        """
        until = self._refused_until
        return now if until == -math.inf else until

    def status(self, now: float) -> BreakerStatus:
        """Return a frozen view of the breaker at ``now``."""
        admits = self.available(now)
        window = self._window
        window.roll(now)
        return BreakerStatus(
            service=self.service,
            endpoint=self.endpoint,
            state=self.state,
            window=window.kind,
            calls=window.calls,
            failures=window.failures,
            slow_calls=window.slow,
            consecutive_failures=self._consecutive,
            trips=self._trips,
            retry_at=None if admits else self.retry_at(now),
            probes=len(self._probes),
        )

    # -- attempts ---------------------------------------------------------------------------

    def record(self, started: float, now: float, failure: bool, slow: bool) -> None:
        """Count the outcome of an attempt that started at ``started`` while the breaker admitted.

        Ignored unless the breaker is closed or forced closed, and was so
        since before ``started``.
        """
        if not self._counting or started < self.since:
            return
        window = self._window
        if (
            self._lazy
            and not (failure or slow or window.failures or window.slow)
            and window.calls == window.size
        ):
            # A count window full of plain successes stays the same with one more:
            # the hot path of a healthy endpoint touches nothing.
            self._consecutive = 0
            return
        window.add(now, failure, slow)
        if failure:
            self._consecutive += 1
        else:
            self._consecutive = 0
            if not slow and self._lazy and window.calls != self.settings.minimum_calls:
                return
        if self.state is State.CLOSED:
            self._evaluate(now, window)

    def try_probe(self, now: float, limit: Callable[[], float]) -> Probe | None:
        """Take a half-open probe slot at ``now``, or return ``None`` to refuse the attempt.

        Call it when :attr:`admits` is false. ``limit`` returns the time by
        which the attempt must have ended; it is called later, when another
        caller wants the slot.
        """
        self._refresh(now)
        if self.state is not State.HALF_OPEN:
            return None
        probes = self._probes
        self._drop_abandoned(now)
        if len(probes) >= self.settings.half_open_probes:
            return None
        probe = Probe(self, limit)
        probes.append(probe)
        return probe

    def record_probe(self, probe: Probe, now: float, failure: bool, slow: bool) -> None:
        """Count a probe's outcome: a failure or a slow probe re-opens, enough successes close."""
        probes = self._probes
        if probe not in probes:
            return  # a transition came between, or it was taken as abandoned
        probes.remove(probe)
        self._probe_calls += 1
        self._probe_failures += failure
        self._probe_slow += slow
        counts = (self._probe_calls, self._probe_failures, self._probe_slow)
        if failure or slow:
            self._trip(now, "probe_failed" if failure else "probe_slow", counts)
        elif self._probe_calls >= self.settings.half_open_successes:
            self._trips = 0
            self._consecutive = 0
            self._window.clear()
            self._move(State.CLOSED, "probes_succeeded", now, counts)

    def release_probe(self, probe: Probe) -> None:
        """Free a probe's slot without a verdict (refused elsewhere, or an error not counted)."""
        if probe in self._probes:
            self._probes.remove(probe)

    # -- transitions ------------------------------------------------------------------------

    def _evaluate(self, now: float, window: Window) -> None:
        settings = self.settings
        calls = window.calls
        reason: TransitionReason
        # Divisions, not rate * calls: 3 / 30 >= 0.1 holds, 3 >= 0.1 * 30 does not.
        if calls >= settings.minimum_calls and window.failures / calls >= settings.failure_rate:
            reason = "failure_rate"
        elif calls >= settings.minimum_calls and window.slow / calls >= settings.slow_call_rate:
            reason = "slow_call_rate"
        elif 0 < settings.consecutive_failures <= self._consecutive:
            reason = "consecutive_failures"
        else:
            return
        self._trip(now, reason, (calls, window.failures, window.slow))

    def _trip(self, now: float, reason: TransitionReason, counts: tuple[int, int, int]) -> None:
        settings = self.settings
        self._trips += 1
        doublings = min(self._trips - 1, _MAX_DOUBLINGS)
        duration = min(settings.open_duration * 2.0**doublings, settings.open_duration_max)
        self._open_until = now + duration
        self._move(State.OPEN, reason, now, counts)

    def _refresh(self, now: float) -> None:
        if self.state is State.OPEN and now >= self._open_until:
            self._move(State.HALF_OPEN, "open_duration_elapsed", now, (0, 0, 0))

    def _drop_abandoned(self, now: float) -> None:
        probes = self._probes
        if probes:
            probes[:] = [probe for probe in probes if probe.limit() >= now]

    def _move(
        self, to: State, reason: TransitionReason, now: float, counts: tuple[int, int, int]
    ) -> None:
        """Enter ``to``, freeing every probe slot, and notify; ``counts`` are the event's."""
        calls, failures, slow = counts
        was = self.state
        self._enter(to)
        self.since = now
        self._probes.clear()
        self._probe_calls = self._probe_failures = self._probe_slow = 0
        self._notify(
            BreakerTransition(
                service=self.service,
                endpoint=self.endpoint,
                from_state=was,
                to_state=to,
                reason=reason,
                failures=failures,
                calls=calls,
                slow_calls=slow,
                at=now,
            )
        )

    # -- configuration ------------------------------------------------------------------

    def reconfigure(self, settings: BreakerSettings, now: float) -> None:
        """Take new settings of the same window kind, keeping the state and the window.

        A new window size keeps the most recent outcomes. A new ``mode`` moves
        the breaker (reason ``"mode"``): to ``force_open``, ``force_closed`` or
        ``disabled`` at once; back to ``normal`` from ``force_open`` through
        half-open (a probe must succeed first), from ``force_closed`` to closed
        with its window, from ``disabled`` to closed with an empty window.
        """
        if settings.window != self._window.kind:
            raise ValueError("a breaker cannot change its window kind; replace it")
        if settings.size != self._window.size:
            self._window = self._window.resized(settings.size, now)
        old_mode = self.settings.mode
        self._use(settings)
        if settings.mode == old_mode:
            return
        was = self.state
        target = initial_state(settings.mode)
        if target is State.CLOSED and was is State.FORCED_OPEN:
            target = State.HALF_OPEN  # trust it again only once a probe succeeded
        elif target is State.DISABLED or (target is State.CLOSED and was is State.DISABLED):
            self._window.clear()  # nothing was counted while disabled: start afresh
            self._consecutive = 0
            self._trips = 0
        window = self._window
        window.roll(now)
        self._move(target, "mode", now, (window.calls, window.failures, window.slow))

    def retire(self, now: float, successor: State = State.CLOSED) -> None:
        """Take the breaker out of service (replaced, or its key no longer used).

        A ``"reset"`` transition to ``successor`` (the state of what takes its
        place) is emitted unless it is already in that state. Afterwards it
        counts nothing and admits every attempt it is still asked about (only
        calls that started under an older configuration can reach it).
        """
        if self.state is not successor:
            window = self._window
            window.roll(now)
            self._move(successor, "reset", now, (window.calls, window.failures, window.slow))
        self._probes.clear()
        self.admits = True
        self._counting = False
