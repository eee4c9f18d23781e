"""The ``retry`` section: defaults, merging, and every invalid value with its path."""

from __future__ import annotations

from typing import Any

import pytest

import healkit
from healkit_retry import SECTION, RetryPlugin, RetrySettings


def test_defaults_are_the_documented_safe_ones() -> None:
    settings = RetrySettings()
    assert settings.attempts == 3
    assert (settings.base, settings.cap, settings.jitter) == (0.1, 5.0, "full")
    assert settings.statuses == (408, 429, 502, 503, 504)
    assert not settings.retry_non_idempotent
    assert not settings.idempotency_key
    assert settings.max_retry_after == 30.0
    assert (settings.budget_ratio, settings.budget_window) == (0.2, 10.0)
    assert settings.budget_min_retries_per_second == 3.0


def test_settings_come_from_defaults_and_service_documents() -> None:
    config = {
        "defaults": {"retry": {"attempts": 5, "base": 0.2}},
        "services": {"a": {"endpoints": ["http://a.test"], "retry": {"base": 0.5}}},
    }
    runtime = healkit.Runtime(config=config, plugins=[RetryPlugin()], entry_points=False)
    assert runtime.config.policy("a").section(SECTION) == RetrySettings(attempts=5, base=0.5)
    assert runtime.config.policy("other").section(SECTION) == RetrySettings(attempts=5, base=0.2)


def test_the_plugin_is_named_retry() -> None:
    runtime = healkit.Runtime(
        plugins=[RetryPlugin()], entry_points=False, block_plugins=["degraded", "routing"]
    )
    assert [p.name for p in healkit.describe_plugins(runtime.plugin_manager)] == ["retry"]


@pytest.mark.parametrize(
    ("retry", "path", "reason"),
    [
        ({"attempts": 0}, "$.services.svc.retry.attempts", "must be >= 1"),
        ({"attempts": 11}, "$.services.svc.retry.attempts", "must be <= 10"),
        ({"base": 6.0}, "$.services.svc.retry", "base (6.0s) must not exceed cap (5.0s)"),
        ({"cap": 0}, "$.services.svc.retry.cap", "must be > 0"),
        ({"jitter": "equal"}, "$.services.svc.retry.jitter", "expected one of"),
        ({"statuses": [404]}, "$.services.svc.retry", "statuses [404] are never retried"),
        ({"statuses": [600]}, "$.services.svc.retry.statuses[0]", "must be <= 599"),
        ({"statuses": [503, 503]}, "$.services.svc.retry", "statuses must not repeat"),
        ({"retry_on": ["bogus"]}, "$.services.svc.retry.retry_on[0]", "expected one of"),
        ({"retry_on": ["status", "status"]}, "$.services.svc.retry", "retry_on must not repeat"),
        ({"max_retry_after": -1}, "$.services.svc.retry.max_retry_after", "must be >= 0"),
        ({"budget_ratio": 1.5}, "$.services.svc.retry.budget_ratio", "must be <= 1"),
        ({"budget_window": 0}, "$.services.svc.retry.budget_window", "must be > 0"),
        ({"idempotency_key": "yes"}, "$.services.svc.retry.idempotency_key", "expected a boolean"),
        ({"atempts": 3}, "$.services.svc.retry", "unknown key 'atempts'"),
    ],
)
def test_invalid_settings_are_rejected_with_their_path(
    retry: dict[str, Any], path: str, reason: str
) -> None:
    config = {"services": {"svc": {"endpoints": ["http://svc.test"], "retry": retry}}}
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.Runtime(config=config, plugins=[RetryPlugin()], entry_points=False)
    assert caught.value.path == path
    assert reason in caught.value.reason


def test_a_rejected_document_keeps_the_last_good_one() -> None:
    runtime = healkit.Runtime(plugins=[RetryPlugin()], entry_points=False)
    with pytest.raises(healkit.ConfigError):
        runtime.apply({"defaults": {"retry": {"attempts": 0}}})
    assert runtime.config.defaults.section(SECTION) == RetrySettings()
