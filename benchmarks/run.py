"""Run healkit's benchmarks and print the results (tables, Markdown, or one JSON object).

Usage::

    python benchmarks/run.py              # every scenario (chaos alone: ~2.5 min on 2 cores)
    python benchmarks/run.py --quick      # a ~10 s smoke run (numbers are rough)
    python benchmarks/run.py --json       # one JSON object on stdout
    python benchmarks/run.py --only http  # one scenario (repeat --only for several)
    python benchmarks/run.py --guard main # the healthy path, this tree against a revision

A scenario is one function registered in :data:`SCENARIOS`; progress goes to
stderr. The exit status is 0 even when a target is missed (benchmarks report,
they do not gate); pass ``--check`` to exit with 1 in that case.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Final

import bench_apply
import bench_chaos
import bench_etcd
import bench_failures
import bench_fleet
import bench_fleet_rate
import bench_healing
import bench_http
import bench_overload
import bench_pipeline
import bench_state
import bench_tail
import guard
from _harness import Scenario, ScenarioResult, Settings, Target, environment, progress

SCENARIOS: Final[dict[str, Scenario]] = {
    "pipeline": Scenario(
        bench_pipeline.run, "the pipeline alone on a stub transport, per plugin set"
    ),
    "http": Scenario(bench_http.run, "end to end vs raw aiohttp and peers on a loopback server"),
    "failures": Scenario(
        bench_failures.run, "refused and failed calls vs Python breakers and raw aiohttp"
    ),
    "etcd": Scenario(bench_etcd.run, "an etcd write until the policy is applied, 1 and 50 clients"),
    "healing": Scenario(
        bench_healing.run, "failover and recovery times on loopback, endpoint selection cost"
    ),
    "chaos": Scenario(
        bench_chaos.run, "a primary failing 30% of calls, a healthy fallback group: failed calls"
    ),
    "state": Scenario(
        bench_state.run, "first-call cost and memory with 10,000 new services, 100,000 new hosts"
    ),
    "apply": Scenario(
        bench_apply.run, "the event loop's lag while 1,000 and 10,000-service documents apply"
    ),
    "fleet": Scenario(
        bench_fleet.run, "500 instances on a three-member etcd cluster: propagation, load, storm"
    ),
    "overload": Scenario(
        bench_overload.run, "goodput and latency at 3x capacity with and without limits; throttling"
    ),
    "tail": Scenario(
        bench_tail.run, "a 5% slow tail with and without hedges; hedges of an always-slow upstream"
    ),
    "fleet-rate": Scenario(
        bench_fleet_rate.run, "4 instances sharing a fleet-wide rate limit; one leaves, one joins"
    ),
}
"""Every benchmark scenario, run in this order. Add a scenario by adding an entry."""

GUARD: Final = "guard"
GUARD_SUMMARY: Final = "the healthy path (pipeline alone), this tree against a base revision"

DISTRIBUTIONS: Final = (
    "healkit",
    "healkit-timeout",
    "healkit-retry",
    "healkit-breaker",
    "healkit-limit",
    "healkit-hedge",
    "healkit-tls",
    "healkit-tracing",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "aiohttp",
    "aiohttp-retry",
    "circuitbreaker",
    "purgatory",
    "aiobreaker",
    "tenacity",
    "stamina",
    "pluggy",
    "anyio",
    "msgspec",
)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--quick", action="store_true", help="a short smoke run; numbers are rough")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(SCENARIOS),
        help="run only this scenario (repeatable); default: all",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if a target is missed"
    )
    parser.add_argument(
        "--guard",
        metavar="REV",
        help="instead of the scenarios: the healthy path of this tree against git revision REV,"
        " in turns, each in its own process (see guard.py)",
    )
    return parser.parse_args(argv)


def _quiet_logs() -> None:
    # Keep stdout for results, and healkit's warnings (a failed attempt would be one)
    # visible on stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def _print_text(
    results: dict[str, ScenarioResult], targets: list[Target], *, markdown: bool
) -> None:
    for name, result in results.items():
        summary = GUARD_SUMMARY if name == GUARD else SCENARIOS[name].summary
        print(f"\n## {name}: {summary}\n" if markdown else "")
        for table in result.tables:
            print(table.render(markdown=markdown))
        for note in result.notes:
            print(f"\n{note}" if markdown else f"  note: {note}")
    print("\n## Targets\n" if markdown else "\nTargets:")
    for target in targets:
        line = target.describe()
        print(f"- {line}" if markdown else f"  {line}")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios and print their results."""
    args = _arguments(argv)
    _quiet_logs()
    settings = Settings(quick=args.quick)
    env = environment(DISTRIBUTIONS)
    started = time.perf_counter()
    results: dict[str, ScenarioResult] = {}
    if args.guard is not None:
        progress(f"[{GUARD}] {GUARD_SUMMARY}")
        results[GUARD] = guard.run(settings, args.guard)
    chosen = [] if args.guard is not None else args.only or list(SCENARIOS)
    for name in chosen:
        progress(f"[{name}] {SCENARIOS[name].summary}")
        results[name] = SCENARIOS[name].run(settings)
    elapsed = time.perf_counter() - started
    targets = [target for result in results.values() for target in result.targets]
    if args.json:
        document = {
            "environment": env,
            "settings": {
                "quick": settings.quick,
                "scenarios": list(results),
                "seconds": round(elapsed, 1),
            },
            **{name: result.as_json() for name, result in results.items()},
            "targets": [target.as_json() for target in targets],
            "all_targets_met": all(target.met for target in targets),
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
        print(
            f"{env['date']}  Python {env['python']}  {env['usable_cpus']} CPUs  "
            f"load {env['load_average_at_start'].get('1min', '?')}  ({elapsed:.0f} s)\n{packages}"
        )
        _print_text(results, targets, markdown=args.markdown)
    return 1 if args.check and not all(target.met for target in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
