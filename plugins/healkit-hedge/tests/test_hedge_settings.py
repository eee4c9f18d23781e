"""The ``hedge`` section: safe defaults, every invalid value refused with its path, reloads."""

from __future__ import annotations

import math
from typing import Any

import pytest

import healkit
from healkit_hedge import SECTION, HedgePlugin, HedgeSettings


def test_defaults_are_the_documented_safe_ones() -> None:
    settings = HedgeSettings()
    assert not settings.enabled
    assert settings.delay is None
    assert settings.percentile == 90.0
    assert settings.min_delay == 0.01
    assert settings.max_hedges == 1
    assert (settings.budget_ratio, settings.budget_window) == (0.1, 10.0)
    assert settings.budget_min_per_second == 1.0


@pytest.mark.parametrize(
    ("hedge", "path", "reason"),
    [
        ({"delay": 0}, "$.services.svc.hedge.delay", "must be > 0"),
        ({"delay": -1.0}, "$.services.svc.hedge.delay", "must be > 0"),
        ({"delay": math.nan}, "$.services.svc.hedge.delay", "must be a finite number"),
        ({"delay": math.inf}, "$.services.svc.hedge.delay", "must be a finite number"),
        ({"percentile": 0}, "$.services.svc.hedge.percentile", "must be > 0"),
        ({"percentile": 100}, "$.services.svc.hedge.percentile", "must be < 100"),
        ({"percentile": math.nan}, "$.services.svc.hedge.percentile", "must be a finite number"),
        ({"min_delay": -0.1}, "$.services.svc.hedge.min_delay", "must be >= 0"),
        ({"max_hedges": -1}, "$.services.svc.hedge.max_hedges", "must be >= 0"),
        ({"max_hedges": 6}, "$.services.svc.hedge.max_hedges", "must be <= 5"),
        ({"budget_ratio": 1.5}, "$.services.svc.hedge.budget_ratio", "must be <= 1"),
        (
            {"budget_ratio": math.nan},
            "$.services.svc.hedge.budget_ratio",
            "must be a finite number",
        ),
        ({"budget_window": 0}, "$.services.svc.hedge.budget_window", "must be > 0"),
        ({"budget_min_per_second": -1}, "$.services.svc.hedge.budget_min_per_second", ">= 0"),
        ({"enabled": "yes"}, "$.services.svc.hedge.enabled", "expected a boolean"),
        ({"delai": 0.1}, "$.services.svc.hedge", "unknown key 'delai'"),
    ],
)
def test_invalid_settings_are_refused_with_their_path(
    hedge: dict[str, Any], path: str, reason: str
) -> None:
    config = {"services": {"svc": {"endpoints": ["http://svc.test"], "hedge": hedge}}}
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.Runtime(config=config, plugins=[HedgePlugin()], entry_points=False)
    assert caught.value.path == path
    assert reason in caught.value.reason


def test_the_plugin_leaves_the_plan_while_no_policy_hedges() -> None:
    runtime = healkit.Runtime(plugins=[HedgePlugin()], entry_points=False)
    assert "hedge" in runtime._plan.idle
    runtime.apply({"services": {"svc": {"hedge": {"enabled": True}}}})
    assert "hedge" not in runtime._plan.idle
    runtime.apply({"services": {"svc": {"hedge": {"enabled": True, "max_hedges": 0}}}})
    assert "hedge" in runtime._plan.idle
    assert runtime.config.policy("svc").section(SECTION).max_hedges == 0
