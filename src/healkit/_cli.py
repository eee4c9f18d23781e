"""The ``healkit`` command line.

::

    healkit plugins [--json] [--check] [--block NAME ...]
    healkit config validate FILE [--block NAME ...]
    healkit config push FILE|DIR [--dry-run] [--prune]     (etcd; see _cli_etcd)
    healkit config get [SERVICE] [--format json|yaml|toml]
    healkit config diff FILE|DIR
    healkit config watch [--count N] [--timeout SECONDS]
    healkit config history SERVICE [--full]
    healkit config rollback SERVICE --to REVISION [--dry-run]
    healkit status [--json]
    healkit demo [--duration SECONDS] [--concurrency N] [--json] [--etcd ENDPOINTS] [--trace]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence
from typing import Final, TextIO

import msgspec

from healkit._cli_args import UsageParser, positive_float, positive_int
from healkit._cli_etcd import add_commands as add_etcd_commands
from healkit._config import build_config
from healkit._config_formats import load_file
from healkit._errors import ConfigError, EtcdError, PluginError
from healkit._plugins import (
    check_plugin_sections,
    create_plugin_manager,
    describe_plugins,
    inspect_plugins,
)
from healkit._runtime import config_sections

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_INVALID: Final = 1
EXIT_USAGE: Final = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args, sys.stdout)
    except (PluginError, EtcdError) as error:
        sys.stderr.write(f"healkit: {error}\n")
        return EXIT_INVALID
    return status


def _parser() -> argparse.ArgumentParser:
    # Typed as the base class: argparse makes every subcommand parser a UsageParser too.
    parser: argparse.ArgumentParser = UsageParser(
        prog="healkit", description="Resilience for asyncio outbound calls."
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"healkit {importlib.metadata.version('healkit')}",
        help="print healkit's version and exit",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    plugins = commands.add_parser("plugins", help="list the plugins healkit loads, and their hooks")
    plugins.add_argument("--json", action="store_true", help="print one JSON array")
    plugins.add_argument(
        "--check",
        action="store_true",
        help="also check each plugin's configuration sections; exit 1 if any plugin is broken",
    )
    _block_option(plugins)
    plugins.set_defaults(run=_plugins)

    config = commands.add_parser("config", help="work with configuration documents")
    config_commands = config.add_subparsers(required=True, metavar="ACTION")
    validate = config_commands.add_parser("validate", help="validate a TOML, YAML or JSON document")
    validate.add_argument("file", help="the document to validate")
    _block_option(validate)
    validate.set_defaults(run=_validate)
    add_etcd_commands(commands, config_commands, _block_option)

    demo = commands.add_parser(
        "demo", help="watch healkit keep traffic alive through a scripted outage"
    )
    demo.add_argument(
        "--duration", type=positive_float, default=30.0, help="seconds to run (default 30)"
    )
    demo.add_argument(
        "--concurrency", type=positive_int, default=16, help="concurrent callers (default 16)"
    )
    demo.add_argument(
        "--json", action="store_true", help="print only the final summary, as one JSON object"
    )
    demo.add_argument(
        "--etcd",
        type=_endpoints,
        default=(),
        metavar="ENDPOINTS",
        help=(
            "keep the demo's policy in this etcd (comma-separated endpoints, namespace"
            " healkit-demo, removed at the end) and change it there mid-run"
        ),
    )
    demo.add_argument(
        "--trace",
        action="store_true",
        help=(
            "trace the run with the OpenTelemetry SDK, in memory, and print a trace summary"
            " at the end (needs healkit-tracing and opentelemetry-sdk)"
        ),
    )
    demo.set_defaults(run=_demo)
    return parser


def _block_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--block",
        action="append",
        default=[],
        metavar="NAME",
        help="do not load this entry-point plugin (repeatable)",
    )


def _plugins(args: argparse.Namespace, out: TextIO) -> int:
    pm = inspect_plugins(block=args.block)
    problems = check_plugin_sections(pm) if args.check else {}
    infos = describe_plugins(pm, problems)
    broken = [info for info in infos if info.error is not None]
    if args.json:
        out.write(msgspec.json.encode(infos).decode() + "\n")
    elif not infos:
        out.write("no plugins installed\n")
    for info in infos if not args.json else ():
        origin = f"{info.distribution} {info.version}" if info.distribution else info.source
        role = " (observer)" if info.observer else ""
        state = " BROKEN" if info.error is not None else ""
        out.write(f"{info.name}{role}: {origin}{state}\n")
        if info.error is not None:
            out.write(f"    error: {info.error}\n")
        else:
            out.write(f"    hooks: {', '.join(info.hooks)}\n")
    if broken and not args.json:
        names = ",".join(info.name for info in broken)
        sys.stderr.write(
            f"healkit: {len(broken)} broken plugin{'s' if len(broken) != 1 else ''}: every "
            f"client refuses to start until it is fixed or blocked "
            f"(HEALKIT_BLOCK_PLUGINS={names})\n"
        )
    return EXIT_INVALID if args.check and broken else EXIT_OK


def _validate(args: argparse.Namespace, out: TextIO) -> int:
    sections = config_sections(create_plugin_manager(block=args.block))
    try:
        document = load_file(args.file)
        config = build_config(document, sections, origin=args.file)
    except ConfigError as error:
        out.writelines(f"{issue.path}: {issue.reason}\n" for issue in error.issues)
        count = len(error.issues)
        out.write(f"{args.file}: invalid ({count} problem{'s' if count != 1 else ''})\n")
        return EXIT_INVALID
    services = sorted(config.services)
    names = ", ".join(s.name for s in config.sections) or "none"
    listed = ", ".join(services) if services else "none"
    out.write(
        f"{args.file}: valid ({len(services)} services: {listed}; plugin sections: {names})\n"
    )
    return EXIT_OK


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    # The demo pulls in rich (and, for its options, plugin packages): load it only here.
    from healkit._demo import DemoError, run_demo  # noqa: PLC0415

    try:
        return run_demo(
            duration=args.duration,
            concurrency=args.concurrency,
            as_json=args.json,
            out=out,
            etcd=args.etcd,
            trace=args.trace,
        )
    except DemoError as error:
        sys.stderr.write(f"healkit: {error}\n")
        return EXIT_USAGE


def _endpoints(text: str) -> tuple[str, ...]:
    endpoints = tuple(part.strip() for part in text.split(",") if part.strip())
    if not endpoints:
        raise argparse.ArgumentTypeError("give at least one etcd endpoint")
    return endpoints


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
