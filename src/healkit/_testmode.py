"""The process-wide test mode: retries without backoff sleeps, optionally fewer attempts.

Applications switch it on in their own tests (``healkit.testing.set_testing``,
or the ``healkit_testing`` pytest fixture) so that a call whose policy retries
with seconds of backoff finishes at once. The executor reads :data:`TEST_MODE`
when a call starts (its ``attempts`` lowers ``call.attempt_limit``, which retry
plugins honour) and before a backoff sleep, which it skips.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType
from typing import Final, final

__all__ = ["TEST_MODE", "is_testing", "set_testing"]


@final
class _State:
    """What the test mode is set to: whether it is on, and the attempts it allows.

    Attributes:
        on: whether backoff sleeps are skipped.
        attempts: the most attempts a call may make while the mode is on
            (``None``: as many as the policy's retry settings allow).

    """

    __slots__ = ("attempts", "on")

    def __init__(self) -> None:
        self.on = False
        self.attempts: int | None = None

    def __repr__(self) -> str:
        return f"<healkit test mode on={self.on} attempts={self.attempts}>"


TEST_MODE: Final = _State()
"""The one state of the process (a test mode is process-wide by nature)."""


@final
class _Restore(AbstractContextManager[None]):
    """The test mode as it was set; as a context manager, restores what was before.

    Returned by :func:`healkit.testing.set_testing`; it has already taken effect
    when it is returned, so it may be used as a plain call or in a ``with``
    block, at whose end the previous setting comes back.
    """

    __slots__ = ("_before",)

    def __init__(self, before: tuple[bool, int | None]) -> None:
        self._before = before

    def __enter__(self) -> None:
        """Nothing to do: :func:`set_testing` has applied the setting already."""
        return

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Restore the setting that was in force before ``set_testing``."""
        TEST_MODE.on, TEST_MODE.attempts = self._before


def set_testing(on: bool, *, attempts: int | None = None) -> AbstractContextManager[None]:
    """Switch healkit's test mode on or off for the whole process.

    While it is on, the pipeline carries out every retry decision at once,
    without the backoff (or ``Retry-After``) sleep the decision asked for; the
    decisions themselves do not change (retry rules, budgets and deadlines
    apply as in production). With ``attempts``, a call makes at most that many
    attempts (``attempts=1``: no retries at all), as if every call passed
    that ``attempts=`` (a lower per-call value still wins).

    Meant for an application's own tests; the ``healkit_testing`` pytest
    fixture switches it on for one test and restores it after. Used as a
    context manager (``with set_testing(True): ...``), the previous setting
    comes back at the end of the block.

    Args:
        on: whether the test mode is on.
        attempts: the most attempts a call may make while the mode is on
            (``None``: as the policy allows); only with ``on=True``.

    Raises:
        ValueError: ``attempts`` is not an int of at least 1, or is given with
            ``on=False``.

    """
    if attempts is not None:
        if not on:
            raise ValueError("attempts= applies only with the test mode on")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be an int of at least 1, got {attempts!r}")
    before = (TEST_MODE.on, TEST_MODE.attempts)
    TEST_MODE.on = bool(on)
    TEST_MODE.attempts = attempts
    return _Restore(before)


def is_testing() -> bool:
    """Return whether healkit's test mode is on (see :func:`set_testing`)."""
    return TEST_MODE.on
