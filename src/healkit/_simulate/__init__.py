"""``healkit config simulate``: a policy's behaviour against scripted upstreams.

* :mod:`._scenarios`: the scenario model, its file format and the built-in scenarios;
* :mod:`._loop`: virtual time over real loopback I/O;
* :mod:`._runner`: one service's policy through one scenario, with the real
  pipeline and the installed plugins;
* :mod:`._report`: the figures, thresholds on them, the comparison of two policies.
"""

from healkit._simulate._loop import LoopClock, VirtualTimeLoop
from healkit._simulate._report import (
    FIGURES,
    Figures,
    PhaseFigures,
    Threshold,
    Verdict,
    change,
    check_thresholds,
    figures,
    parse_threshold,
)
from healkit._simulate._runner import Run, simulate_service
from healkit._simulate._scenarios import (
    BUILTIN_SCENARIOS,
    FaultSpec,
    Phase,
    Scenario,
    Upstream,
    load_scenarios,
)

__all__ = [
    "BUILTIN_SCENARIOS",
    "FIGURES",
    "FaultSpec",
    "Figures",
    "LoopClock",
    "Phase",
    "PhaseFigures",
    "Run",
    "Scenario",
    "Threshold",
    "Upstream",
    "Verdict",
    "VirtualTimeLoop",
    "change",
    "check_thresholds",
    "figures",
    "load_scenarios",
    "parse_threshold",
    "simulate_service",
]
