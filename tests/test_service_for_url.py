"""Which service an absolute URL belongs to: the longest endpoint it starts with.

``HealkitConfig.service_for_url`` looks the URL's prefixes up in a dictionary
of endpoints instead of trying every endpoint; these tests hold it to the
rule it replaced (every endpoint tried, longest first, with ``url_under``).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import healkit
from healkit._config.models import normalize_endpoint, url_under

HOSTS = ("http://a.test", "http://a.test:8080", "https://a.test", "http://b.test")
PATHS = ("", "/x", "/x/y", "/xy", "/x/y/z", "/x%2Fy", "/x/")
SUFFIXES = ("", "/", "/q", "?a=/b", "#f/x", "x", "/x/y", "?", "#", "//", "/x?y#z")


def by_trying_every_endpoint(config: healkit.HealkitConfig, url: str) -> str | None:
    matches = [
        (len(endpoint), name)
        for name, policy in config.services.items()
        for endpoint in policy.endpoints
        if url_under(url, endpoint)
    ]
    return max(matches)[1] if matches else None


endpoints = st.builds(
    lambda host, path: host + path, st.sampled_from(HOSTS), st.sampled_from(PATHS)
)


@settings(max_examples=300, deadline=None)
@given(
    chosen=st.lists(endpoints, min_size=1, max_size=8, unique=True),
    base=endpoints,
    suffix=st.sampled_from(SUFFIXES),
)
def test_a_url_belongs_to_the_service_of_its_longest_endpoint(
    chosen: list[str], base: str, suffix: str
) -> None:
    # "http://a.test/x/" and "http://a.test/x" are one endpoint once normalized.
    unique = {normalize_endpoint(e): e for e in chosen}
    config = healkit.build_config(
        {"services": {f"s{i}": {"endpoints": [e]} for i, e in enumerate(unique.values())}}
    )
    url = base + suffix
    assert config.service_for_url(url) == by_trying_every_endpoint(config, url)


def test_a_path_prefix_wins_over_its_host_and_only_at_a_boundary() -> None:
    config = healkit.build_config(
        {
            "services": {
                "gateway": {"endpoints": ["http://gw.test"]},
                "payments": {"endpoints": ["http://gw.test/payments"]},
            }
        }
    )
    assert config.service_for_url("http://gw.test/payments") == "payments"
    assert config.service_for_url("http://gw.test/payments?x=1") == "payments"
    assert config.service_for_url("http://gw.test/payments#top") == "payments"
    assert config.service_for_url("http://gw.test/payments/v1/x") == "payments"
    assert config.service_for_url("http://gw.test/paymentsx") == "gateway"
    assert config.service_for_url("http://gw.test") == "gateway"
    assert config.service_for_url("http://gw.testx/payments") is None
    assert config.service_for_url("http://other.test/") is None


def test_a_url_longer_than_every_endpoint_is_looked_up_by_its_head() -> None:
    config = healkit.build_config({"services": {"s": {"endpoints": ["http://a.test/x"]}}})
    assert config.service_for_url("http://a.test/x" + "/" * 100_000) == "s"
    assert config.service_for_url("http://a.test/" + "y/" * 50_000) is None
    assert healkit.build_config({}).service_for_url("http://a.test/x") is None
