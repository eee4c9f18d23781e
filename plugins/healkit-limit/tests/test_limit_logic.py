"""The pure parts: the gradient controller, the throttle's window, the token bucket, settings."""

from __future__ import annotations

import msgspec
import pytest

import healkit
from healkit_limit import SECTION, GradientLimit, LimitPlugin, LimitSettings
from healkit_limit._adaptive import MEASURE_SAMPLES
from healkit_limit._rate import TokenBucket
from healkit_limit._throttle import BUCKETS, Throttle

pytestmark = pytest.mark.anyio

RTT = 0.1


def adaptive(**changes: object) -> GradientLimit:
    settings = msgspec.structs.replace(LimitSettings(concurrency=20, adaptive=True), **changes)
    return GradientLimit(settings, now=0.0)


def test_the_limit_grows_while_the_upstream_answers_as_fast_as_unloaded() -> None:
    limit = adaptive()
    for i in range(500):  # 5 s of answers, 50 round trips
        limit.sample(RTT, i * 0.01, in_flight=limit.limit, dropped=False)
    assert limit.limit > 25
    assert limit.min_rtt == RTT


def test_the_limit_moves_once_per_round_trip() -> None:
    limit = adaptive()
    for i in range(9):  # answers within the first round trip (0.1 s)
        limit.sample(RTT, i * 0.01, in_flight=20, dropped=False)
    assert limit.value == 20.0
    limit.sample(RTT, RTT, in_flight=20, dropped=False)
    assert limit.value == pytest.approx(20.2)  # gradient 1: one attempt of headroom, smoothed


def test_the_limit_does_not_grow_when_the_caller_limits_the_load() -> None:
    limit = adaptive()
    for i in range(500):
        limit.sample(RTT, i * 0.01, in_flight=3, dropped=False)
    assert limit.limit == 20


def test_the_limit_shrinks_when_latency_rises_beyond_the_tolerance() -> None:
    limit = adaptive()
    limit.sample(RTT, 0.0, in_flight=20, dropped=False)
    for i in range(200):
        limit.sample(4 * RTT, 0.01 * i, in_flight=limit.limit, dropped=False)
    assert limit.limit < 10


def test_a_drop_backs_off_multiplicatively_once_per_round_trip_within_the_bounds() -> None:
    limit = adaptive(min_concurrency=5)
    limit.sample(RTT, 0.0, in_flight=20, dropped=True)
    assert limit.value == pytest.approx(18.0)
    limit.sample(RTT, RTT / 2, in_flight=20, dropped=True)  # the same overload
    assert limit.value == pytest.approx(18.0)
    for i in range(1, 100):
        limit.sample(RTT, i * RTT, in_flight=20, dropped=True)
    assert limit.limit == 5


def test_the_unloaded_latency_is_measured_again_after_the_window() -> None:
    limit = adaptive(min_rtt_window=30.0, min_concurrency=2)
    limit.sample(RTT, 0.0, in_flight=20, dropped=False)
    before = limit.value
    limit.sample(2 * RTT, 30.0, in_flight=20, dropped=False)  # the window has passed
    assert limit.limit == 2  # pinned low to see the upstream unloaded
    for i in range(MEASURE_SAMPLES):
        limit.sample(2 * RTT + i * 0.001, 30.0 + i, in_flight=2, dropped=False)
    assert limit.min_rtt == pytest.approx(2 * RTT)  # the upstream became slower for good
    assert limit.value == before


def test_throttle_probability_is_the_sre_formula_over_a_sliding_window() -> None:
    throttle = Throttle(2.0, 120.0, now=0.0)
    for _ in range(10):
        throttle.request(0.0)
    for _ in range(3):
        throttle.accept(0.0)
    assert throttle.probability(0.0) == pytest.approx((10 - 2 * 3) / 11)
    # A twelfth of the window later the counts are still in...
    assert throttle.probability(120.0 / BUCKETS) == pytest.approx(4 / 11)
    # ...a whole window later they are gone.
    assert throttle.probability(120.0 + 120.0 / BUCKETS) == 0.0
    assert (throttle.requests, throttle.accepts) == (0, 0)


def test_a_token_bucket_reserves_within_the_wait_and_stays_bounded() -> None:
    bucket = TokenBucket(rate=10.0, size=1, now=0.0)
    assert bucket.reserve(0.0, 0.0) == 0.0
    assert bucket.reserve(0.0, 0.0) is None
    assert bucket.reserve(0.0, 0.25) == pytest.approx(0.1)
    assert bucket.reserve(0.0, 0.25) == pytest.approx(0.2)
    assert bucket.reserve(0.0, 0.25) is None  # 0.3 s away: the debt stays bounded
    assert bucket.tokens == pytest.approx(-2.0)  # two tokens owed, no more
    assert bucket.wait_for_token(10.0) == 0.0


@pytest.mark.parametrize(
    ("section", "reason"),
    [
        ({"adaptive": True}, "adaptive needs concurrency"),
        ({"queue": 5}, "queue needs concurrency"),
        ({"burst": 5}, "burst needs rate"),
        ({"concurrency": 5, "min_concurrency": 10, "max_concurrency": 5}, "min_concurrency"),
        ({"concurrency": 0}, ">= 1"),
        ({"throttle_k": 0.5}, "throttle_k: must be >= 1"),
        ({"reject_statuses": [429, 429]}, "must not repeat"),
        ({"rate_mode": "burst"}, "rate_mode"),
        ({"concurency": 5}, "concurency"),
    ],
)
def test_invalid_sections_are_config_errors(section: dict[str, object], reason: str) -> None:
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.build_config({"services": {"svc": {"limit": section}}}, (SECTION,))
    assert reason in str(caught.value)
    assert "limit" in caught.value.path


async def test_unconfigured_services_keep_their_limits_within_the_state_bounds() -> None:
    plugin = LimitPlugin()
    document = {
        "defaults": {"limit": {"concurrency": 4}},
        "state": {"max_unconfigured": 3},
    }
    runtime = healkit.Runtime(config=document, plugins=[plugin], entry_points=False)
    async with runtime:
        for index in range(10):

            @healkit.resilient(service=f"svc-{index}", runtime=runtime)
            async def work() -> None:
                return None

            await work()
    assert len(plugin.unconfigured_limits) == 3


async def test_without_a_limit_configured_the_plugin_leaves_the_plan() -> None:
    runtime = healkit.Runtime(config={}, plugins=[LimitPlugin()], entry_points=False)
    async with runtime:
        assert "limit" in runtime._plan.idle
        assert not runtime._plan.has_admit
    runtime = healkit.Runtime(
        config={"defaults": {"limit": {"rate": 5.0}}}, plugins=[LimitPlugin()], entry_points=False
    )
    async with runtime:
        assert runtime._plan.has_admit


def test_the_first_accept_in_a_window_drops_the_local_refusals() -> None:
    throttle = Throttle(2.0, 120.0, now=0.0)
    throttle.request(0.0)
    throttle.reject()
    for _ in range(50):
        throttle.refused(0.0)
    assert throttle.probability(0.0) == pytest.approx(51 / 52)
    throttle.request(0.0)
    throttle.accept(0.0)  # the outage is over: only what the upstream answered counts
    assert (throttle.requests, throttle.accepts) == (2, 1)
    assert throttle.probability(0.0) == 0.0
    throttle.refused(0.0)  # after an accept, a local refusal is no evidence
    assert throttle.requests == 2
    throttle.request(0.0)
    throttle.reject()
    throttle.refused(0.0)  # after a rejection it counts again...
    throttle.request(0.0)
    throttle.accept(0.0)  # ...and stays: this is not the first accept of the window
    assert (throttle.requests, throttle.accepts) == (5, 2)


def test_a_probe_goes_when_nothing_was_sent_for_a_twelfth_of_the_window() -> None:
    throttle = Throttle(2.0, 120.0, now=0.0)
    throttle.request(0.0)
    assert not throttle.probe_due(120.0 / BUCKETS - 0.001)
    assert throttle.probe_due(120.0 / BUCKETS)
    throttle.refused(120.0 / BUCKETS)  # a refusal is not a request sent
    assert throttle.probe_due(120.0 / BUCKETS)
    throttle.request(120.0 / BUCKETS)
    assert not throttle.probe_due(120.0 / BUCKETS)
