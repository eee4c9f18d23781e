"""The public surface is exactly what __all__ says, sorted, and documented."""

from __future__ import annotations

import inspect

import healkit
import healkit.testing
from healkit import hookspecs


def test_all_is_sorted_and_complete() -> None:
    assert healkit.__all__ == sorted(healkit.__all__, key=lambda n: (not n.isupper(), n))
    public = {name for name in vars(healkit) if not name.startswith("_")}
    modules = {name for name in public if inspect.ismodule(getattr(healkit, name))}
    assert public - modules == set(healkit.__all__) - {"__version__"}
    assert all(hasattr(healkit, name) for name in healkit.__all__)


def test_testing_all() -> None:
    assert healkit.testing.__all__ == sorted(healkit.testing.__all__)
    for name in healkit.testing.__all__:
        assert getattr(healkit.testing, name).__doc__


def test_public_objects_have_docstrings() -> None:
    for name in healkit.__all__:
        value = getattr(healkit, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__doc__, name


def test_every_hook_states_its_result_semantics() -> None:
    hooks = [name for name in vars(hookspecs) if name.startswith("healkit_")]
    assert len(hooks) == 23
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Result:" in doc, name
        assert "awaitable" in doc, name
