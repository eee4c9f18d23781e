"""``healkit config simulate``: what a policy does under failure, before it is pushed.

::

    healkit config simulate FILE|DIR [--against etcd|FILE|DIR] [--service NAME ...]
        [--scenario NAME ...] [--scenario-file FILE ...] [--fail-if THRESHOLD ...]
        [--json] [--block NAME ...] [etcd connection options, with --against etcd]

Each service's policy runs through the real pipeline and the installed plugins
against loopback upstreams that follow each scenario (see
:mod:`healkit._simulate`). With ``--against`` the current policy runs through
the same scenarios and the report shows both, with the change of each figure.
Exit status: 0 (no threshold crossed), 1 (a threshold crossed, or a document
or scenario file invalid), 2 (usage).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from healkit._cli.args import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    close_names,
    write_config_error,
    write_json,
)
from healkit._cli.connection import connection_options, resolve_connection
from healkit._cli.documents import assemble, decode_stored, load_source, read_namespace
from healkit._cli.entry_logs import routed_logs
from healkit._config.formats import load_file
from healkit._errors import ConfigError, EtcdError
from healkit._simulate import (
    BUILTIN_SCENARIOS,
    Figures,
    Scenario,
    Threshold,
    Verdict,
    change,
    check_thresholds,
    figures,
    load_scenarios,
    parse_threshold,
    simulate_service,
)

__all__ = ["SIMULATED_NOTE", "add_command"]

SIMULATED_NOTE: Final = (
    "times are simulated: upstream latency, time limits, backoff, breaker and probe timing"
    " run on a virtual clock, and loopback I/O and CPU count as zero; counts (calls, paths,"
    " upstream requests, probes, breaker transitions) are measured from real requests on"
    " loopback"
)
"""What is simulated and what is measured, printed with every report."""

_AGAINST_ETCD: Final = "etcd"


def add_command(
    config_commands: argparse._SubParsersAction[argparse.ArgumentParser],
    block_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``simulate`` to the ``config`` actions."""
    parser = config_commands.add_parser(
        "simulate",
        help="run a policy against simulated failures and report what it does",
        description=(
            "Run each service's policy, through the real pipeline and the installed plugins,"
            " against loopback upstreams scripted by scenarios (built-in, or from"
            " --scenario-file), on simulated time. With --against, compare it with the"
            " current policy (etcd's, or a file's). Exit status 0: no --fail-if threshold"
            " crossed, 1: one was (or a document is invalid), 2: usage error."
        ),
    )
    parser.add_argument(
        "source", metavar="FILE|DIR", help="the proposed document, or one file a service"
    )
    parser.add_argument(
        "--against",
        metavar="etcd|FILE|DIR",
        help="the current policy to compare with: 'etcd' (the namespace, read with the"
        " connection options) or a document",
    )
    parser.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="NAME",
        help="simulate only this service (repeatable; default: every service)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help=(
            f"run only this scenario (repeatable; built-in: {', '.join(BUILTIN_SCENARIOS)};"
            " default: all, with those of --scenario-file)"
        ),
    )
    parser.add_argument(
        "--scenario-file",
        action="append",
        default=[],
        metavar="FILE",
        help="add the scenarios of this TOML, YAML or JSON file (repeatable)",
    )
    parser.add_argument(
        "--fail-if",
        action="append",
        default=[],
        type=_threshold,
        metavar="THRESHOLD",
        help=(
            "exit 1 if the proposed policy's figure crosses this:"
            " [SCENARIO[/PHASE]:]FIGURE<NUMBER, >, <= or >=; NUMBER may end in %%"
            " (e.g. 'outage-recovery/outage:amplification>1.5', 'success_rate<99.9%%')"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    block_option(parser)
    connection_options(parser)

    def run(args: argparse.Namespace, out: TextIO) -> int:
        return _simulate(args, out, parser)

    parser.set_defaults(run=run)


def _threshold(text: str) -> Threshold:
    try:
        return parse_threshold(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _document(source: str) -> dict[str, Any]:
    """Read a whole document (FILE) or one file a service (DIR), as ``config validate`` does."""
    document = assemble(load_source(source)) if Path(source).is_dir() else load_file(source)
    if not isinstance(document, dict):  # pragma: no cover - load_file returns mappings
        return {}
    return document


def _scenarios(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Scenario]:
    """Return the scenarios to run, in order: built-in first, then those of the files."""
    known: dict[str, Scenario] = dict(BUILTIN_SCENARIOS)
    for file in args.scenario_file:
        loaded = load_scenarios(file)
        repeated = sorted(set(loaded) & set(known))
        if repeated:
            parser.error(f"scenario {repeated[0]!r} of {file} is defined twice")
        known.update(loaded)
    if not args.scenario:
        return known
    for name in args.scenario:
        if name not in known:
            parser.error(f"unknown scenario {name!r}{close_names(name, known)}")
    return {name: known[name] for name in dict.fromkeys(args.scenario)}


def _check_names(
    threshold: Threshold, scenarios: Mapping[str, Scenario], parser: argparse.ArgumentParser
) -> None:
    """Refuse a threshold naming a scenario, or a phase of it, that does not run.

    Such a threshold would never be checked: a typo must not pass a CI gate.
    """
    name, phase = threshold.scenario, threshold.phase
    if name is None:
        return
    if name not in scenarios:
        parser.error(f"--fail-if {threshold.spec!r}: no scenario {name!r}")
    phases = [entry.name for entry in scenarios[name].phases]
    if phase is not None and phase not in phases:
        parser.error(
            f"--fail-if {threshold.spec!r}: no phase {phase!r} in scenario {name!r}"
            f"{close_names(phase, phases)}"
        )


def _simulate(args: argparse.Namespace, out: TextIO, parser: argparse.ArgumentParser) -> int:
    err = sys.stderr
    try:
        scenarios = _scenarios(args, parser)
        for threshold in args.fail_if:
            _check_names(threshold, scenarios, parser)
        proposed = _document(args.source)
        current = _current(args, parser)
        services = _services(args, parser, proposed)
        with routed_logs(None):
            report = _report(args, scenarios, services, proposed, current)
    except ConfigError as error:
        write_config_error(err, error)
        return EXIT_FAILED
    except EtcdError as error:
        err.write(f"healkit: {type(error).__name__}: {error.message}\n")
        return EXIT_USAGE
    if args.json:
        write_json(out, report)
    else:
        _write_text(out, report)
    crossed = [v for v in report["thresholds"] if v.crossed]
    for verdict in crossed:
        err.write(
            f"healkit: {verdict.service} {verdict.scenario}: {verdict.threshold}"
            f" (observed {_show(verdict.observed)})\n"
        )
    return EXIT_FAILED if crossed else EXIT_OK


def _current(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any] | None:
    if args.against is None:
        return None
    if args.against != _AGAINST_ETCD:
        return _document(args.against)
    connection = resolve_connection(args, parser)

    async def read() -> dict[str, Any]:
        async with connection.client() as client:
            state = await read_namespace(client, connection.root)
        documents = {
            key: decode_stored(kv.value, f"{connection.root}{key}")
            for key, kv in state.keys.items()
        }
        return assemble(documents)

    with routed_logs(None):
        return asyncio.run(read())


def _services(
    args: argparse.Namespace, parser: argparse.ArgumentParser, document: Mapping[str, Any]
) -> list[str]:
    present = document.get("services")
    names = sorted(present) if isinstance(present, Mapping) else []
    if not args.service:
        return names
    for name in args.service:
        if name not in names:
            parser.error(f"no service {name!r} in {args.source}{close_names(name, names)}")
    return list(dict.fromkeys(args.service))


def _report(
    args: argparse.Namespace,
    scenarios: Mapping[str, Scenario],
    services: Sequence[str],
    proposed: Mapping[str, Any],
    current: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Run every service through every scenario (and the current policy too) and report."""
    entries = []
    verdicts: list[Verdict] = []
    current_services = (current or {}).get("services")
    for service in services:
        runs = simulate_service(proposed, service, scenarios, block=args.block, origin=args.source)
        mine = {run.scenario: figures(run) for run in runs}
        before: dict[str, Figures] = {}
        if (
            current is not None
            and isinstance(current_services, Mapping)
            and (service in current_services)
        ):
            before = {
                run.scenario: figures(run)
                for run in simulate_service(
                    current, service, scenarios, block=args.block, origin=str(args.against)
                )
            }
        verdicts += check_thresholds(args.fail_if, service, mine)
        entries.append(
            {
                "service": service,
                "compared": bool(before),
                "scenarios": [
                    {
                        "scenario": name,
                        "description": scenarios[name].description,
                        "seed": scenarios[name].seed,
                        "proposed": mine[name],
                        "current": before.get(name),
                        "change": change(before[name], mine[name]) if before else None,
                    }
                    for name in scenarios
                ],
            }
        )
    return {
        "source": args.source,
        "against": args.against,
        "simulated": SIMULATED_NOTE,
        "services": entries,
        "thresholds": verdicts,
        "passed": not any(v.crossed for v in verdicts),
    }


# -- text ---------------------------------------------------------------------------------------


def _show(number: object) -> str:
    if number is None:
        return "-"
    if number == "never":
        return "never"
    assert isinstance(number, int | float)  # noqa: S101 - figures are numbers or "never"
    if math.isinf(number):
        return "never"
    return f"{number:g}"


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _seconds(value: object) -> str:
    if value is None:
        return "-"
    if value == "never":
        return "never"
    assert isinstance(value, int | float)  # noqa: S101 - seconds, or the cases above
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _rows(report: Figures) -> list[tuple[str, str]]:
    paths = report.paths
    return [
        ("calls", str(report.calls)),
        ("success rate", _pct(report.success_rate)),
        (
            "paths p/r/f/d/failed",
            "/".join(str(paths[p]) for p in ("primary", "retry", "fallback", "degraded", "failed")),
        ),
        ("latency p50", _seconds(report.p50)),
        ("latency p99", _seconds(report.p99)),
        ("latency max", _seconds(report.max)),
        ("upstream requests", str(report.upstream_attempts)),
        ("amplification", f"{report.amplification:.2f}"),
        ("breaker transitions", str(len(report.breaker_transitions))),
        ("time to fail over", _seconds(report.failover_time)),
        ("time to recover", _seconds(report.recovery_time)),
        ("health probes", str(report.probes)),
    ]


def _delta_seconds(delta: float) -> str:
    return f"{delta * 1000:+.0f} ms" if abs(delta) < 1 else f"{delta:+.2f} s"


def _delta_count(delta: float) -> str:
    return f"{delta:+.0f}"


_CHANGES: Final[Mapping[str, tuple[str, Callable[[float], str]]]] = {
    "success rate": ("success_rate", lambda d: f"{d * 100:+.1f} pt"),
    "latency p50": ("p50", _delta_seconds),
    "latency p99": ("p99", _delta_seconds),
    "latency max": ("max", _delta_seconds),
    "upstream requests": ("upstream_attempts", _delta_count),
    "amplification": ("amplification", lambda d: f"{d:+.2f}"),
    "breaker transitions": ("breaker_transitions", _delta_count),
    "time to fail over": ("failover_time", _delta_seconds),
    "time to recover": ("recovery_time", _delta_seconds),
    "health probes": ("probes", _delta_count),
}


def _write_text(out: TextIO, report: Mapping[str, Any]) -> None:
    out.write(f"note: {report['simulated']}\n")
    for entry in report["services"]:
        out.write(f"\nservice {entry['service']}\n")
        for scenario in entry["scenarios"]:
            _write_scenario(out, scenario)
    verdicts: list[Verdict] = report["thresholds"]
    if verdicts:
        out.write("\nthresholds\n")
        for verdict in verdicts:
            state = "CROSSED" if verdict.crossed else "ok"
            out.write(
                f"  {state:<8}{verdict.service} {verdict.scenario}: {verdict.threshold}"
                f" (observed {_show(verdict.observed)})\n"
            )


def _write_scenario(out: TextIO, scenario: Mapping[str, Any]) -> None:
    proposed: Figures = scenario["proposed"]
    current: Figures | None = scenario["current"]
    changes: dict[str, float | None] | None = scenario["change"]
    out.write(
        f"\n  scenario {scenario['scenario']} (seed {scenario['seed']}):"
        f" {scenario['description']}\n"
    )
    mine = _rows(proposed)
    if current is None or changes is None:
        out.write(f"    {'figure':<22}{'proposed':>18}\n")
        out.writelines(f"    {label:<22}{text:>18}\n" for label, text in mine)
    else:
        out.write(f"    {'figure':<22}{'current':>18}{'proposed':>18}{'change':>12}\n")
        for (label, now), (_, before) in zip(mine, _rows(current), strict=True):
            delta = ""
            if label in _CHANGES:
                key, shown = _CHANGES[label]
                number = changes.get(key)
                delta = "-" if number is None else shown(number)
            out.write(f"    {label:<22}{before:>18}{now:>18}{delta:>12}".rstrip() + "\n")
    for phase in proposed.phases:
        mark = f" [{phase.mark}]" if phase.mark else ""
        if not phase.calls:
            out.write(f"    phase {phase.name}{mark} at {phase.start:g} s: no call started in it\n")
            continue
        out.write(
            f"    phase {phase.name}{mark} at {phase.start:g} s: {phase.calls} calls,"
            f" success {_pct(phase.success_rate)}, amplification {phase.amplification:.2f},"
            f" p99 {_seconds(phase.p99)}\n"
        )
    out.writelines(
        f"    breaker {transition.endpoint} at {transition.at:g} s:"
        f" {transition.from_state} -> {transition.to_state}\n"
        for transition in proposed.breaker_transitions[:_TRANSITIONS_SHOWN]
    )
    hidden = len(proposed.breaker_transitions) - _TRANSITIONS_SHOWN
    if hidden > 0:
        out.write(f"    ... {hidden} more breaker transitions (--json lists them all)\n")


_TRANSITIONS_SHOWN: Final = 6
