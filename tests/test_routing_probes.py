"""What a probe's result changes in an endpoint's health (``count_probe``)."""

from __future__ import annotations

import math

from healkit._routing.health import Health
from healkit._routing.probes import count_probe
from healkit._routing.settings import ProbeSettings
from healkit.events import EndpointDown, EndpointReturned

SETTINGS = ProbeSettings(healthy_threshold=2, unhealthy_threshold=3)
TARGET = ("payments", "http://127.0.0.1:1", SETTINGS)


def test_failed_probes_take_an_endpoint_down_once_at_the_threshold() -> None:
    health = Health()
    changes = [count_probe(health, TARGET, good=False, now=1.0) for _ in range(5)]
    down = EndpointDown(service="payments", endpoint="http://127.0.0.1:1", probes=3)
    assert changes == [None, None, down, None, None]
    assert health.down
    assert health.probes_bad == 5


def test_good_probes_bring_a_down_endpoint_back_and_start_its_slow_start() -> None:
    health = Health()
    health.down, health.failures = True, 4
    assert count_probe(health, TARGET, good=True, now=7.0) is None
    returned = count_probe(health, TARGET, good=True, now=8.0)
    assert returned == EndpointReturned(service="payments", endpoint="http://127.0.0.1:1", probes=2)
    assert not health.down
    assert health.failures == 0
    assert health.returned_at == 8.0


def test_good_probes_end_an_ejection_they_saw_fail_but_leave_a_usable_endpoint_alone() -> None:
    ejected = Health()
    ejected.ejected_until = 30.0
    count_probe(ejected, TARGET, good=False, now=9.0)  # the probes saw it fail
    count_probe(ejected, TARGET, good=True, now=10.0)
    assert isinstance(count_probe(ejected, TARGET, good=True, now=11.0), EndpointReturned)
    assert ejected.ejected_until == 11.0  # the ejection ended then
    usable = Health()
    assert [count_probe(usable, TARGET, good=True, now=float(t)) for t in range(3)] == [None] * 3
    assert usable.returned_at == -math.inf


def test_a_good_probe_resets_the_failed_ones_in_a_row() -> None:
    health = Health()
    count_probe(health, TARGET, good=False, now=1.0)
    count_probe(health, TARGET, good=False, now=2.0)
    count_probe(health, TARGET, good=True, now=3.0)
    assert count_probe(health, TARGET, good=False, now=4.0) is None
    assert not health.down
