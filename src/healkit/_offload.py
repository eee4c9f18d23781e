"""Configuration work off the event loop.

Decoding a document and validating it are CPU work that grows with the document
(seconds for a document at the default :class:`~healkit.DocumentLimits`). Done on
the event loop, they would stall every call in flight; :func:`off_loop` runs
them in a worker thread while the loop keeps serving.

The caller awaits the result, so the work of one source stays in order (one
document after the other). If the caller is cancelled, it returns at once and
the worker finishes its bounded piece of work alone; its result is dropped, so
nothing half-done is ever applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

__all__ = ["off_loop"]

T = TypeVar("T")


async def off_loop(func: Callable[[], T]) -> T:
    """Run ``func()`` in a worker thread and return its result (or raise its exception)."""
    return await anyio.to_thread.run_sync(func, abandon_on_cancel=True)
