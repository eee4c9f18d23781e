"""The demo's scenes are written in the scenario model of ``healkit config simulate``.

One definition of what an upstream does: each scene's upstream side is a
:class:`~healkit._simulate.Phase`, the demo scripts its fault servers with it,
and two scenes are the phases of built-in scenarios. The TLS tally counts every
request of an upstream that remembers only its last few (real TLS, real
certificates of the demo).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import msgspec
import pytest

from healkit._config.validate import check
from healkit._demo import DEFAULT_DURATION
from healkit._demo.pki import Pki
from healkit._demo.scenes import SCENES, Scene
from healkit._demo.telemetry import TlsTally
from healkit._simulate import BUILTIN_SCENARIOS, Scenario, Upstream
from healkit.testing import FaultServer


def scene(name: str) -> Scene:
    return next(scene for scene in SCENES if scene.name == name)


def test_the_demo_scenes_are_a_valid_scenario_of_simulate() -> None:
    demo = Scenario(description="healkit demo", phases=tuple(s.phase for s in SCENES))
    # What a scenario file with these phases would hold passes the file format's checks.
    assert check(msgspec.to_builtins(demo), Scenario) == demo
    # The default run: a phase's duration is seconds.
    assert demo.duration == pytest.approx(DEFAULT_DURATION) == 36.0
    for played in SCENES:
        if played.core_primary is not None:
            assert check(msgspec.to_builtins(played.core_primary), Upstream) == played.core_primary


def test_the_storm_and_the_outages_are_the_built_in_scenarios_phases() -> None:
    storm = BUILTIN_SCENARIOS["503-storm"].phases[1]
    outage = BUILTIN_SCENARIOS["outage-recovery"].phases[1]
    assert scene("503 storm").phase.primary == storm.primary
    assert scene("503 storm").phase.fallback == storm.fallback
    # Without the timeout plugin the outage is the built-in one; with it, the primary hangs.
    assert scene("outage").primary(timeouts=False) == outage.primary
    assert [spec.kind for spec in scene("outage").primary(timeouts=True).faults] == ["hang"]
    total = scene("total outage").phase
    assert total.primary == total.fallback == outage.primary


def test_a_healthy_scene_keeps_the_health_check_up_and_a_down_one_fails_it() -> None:
    down = {s.name for s in SCENES if s.primary(timeouts=True).probes == "same"}
    assert down == {"503 storm", "outage", "total outage"}
    assert all(s.primary(timeouts=False).probes == "same" for s in SCENES if s.name in down)
    assert all(s.phase.primary.order == "cycle" for s in SCENES if s.name not in down)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


async def call(server: FaultServer, pki: Pki, times: int) -> None:
    """Make ``times`` requests over one connection presenting the current client certificate."""
    context = ssl.create_default_context(cafile=pki.ca_file)
    context.load_cert_chain(pki.current / "cert.pem", pki.current / "key.pem")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        for _ in range(times):
            async with session.get(f"{server.url}/api") as response:
                assert response.status == 200


@pytest.mark.anyio
async def test_the_tally_counts_every_request_of_an_upstream_that_remembers_few(pki: Pki) -> None:
    tally = TlsTally(scenes=1)
    a, b = pki.subjects["A"], pki.subjects["B"]
    async with FaultServer(ssl_context=pki.server_context(), max_recorded=4) as server:
        await call(server, pki, 3)
        tally.harvest(server, pki, [0.0])
        pki.rotate()
        await call(server, pki, 3)  # the server forgets the first two
        tally.harvest(server, pki, [0.0])
        tally.harvest(server, pki, [0.0])  # nothing new: nothing counted twice
    assert tally.presented == {a: 3, b: 3}
    assert tally.by_scene == [{a: 3, b: 3}]
