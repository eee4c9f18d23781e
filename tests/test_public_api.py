"""The public surface is exactly what __all__ says, sorted, and documented."""

from __future__ import annotations

import inspect

import pytest

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
    assert len(hooks) == 26
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Result:" in doc, name
        assert "awaitable" in doc, name


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("RequestError", "InvalidRequestError"),
        ("EtcdCompacted", "EtcdCompactedError"),
        ("EtcdUnavailable", "EtcdUnavailableError"),
    ],
)
def test_a_renamed_error_keeps_its_old_name_with_a_deprecation_warning(old: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"healkit.{old} is renamed healkit.{new}"):
        former = getattr(healkit, old)
    assert former is getattr(healkit, new)
    assert old not in healkit.__all__


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        healkit.Nope  # type: ignore[attr-defined]  # noqa: B018
