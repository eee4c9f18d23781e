"""The ``healkit`` command line.

::

    healkit plugins [--json] [--check] [--block NAME ...]
    healkit config validate FILE|DIR [--json] [--block NAME ...]
    healkit config push FILE|DIR [--dry-run] [--prune] [--json]     (push.py)
    healkit config diff FILE|DIR [--prune] [--json]                 (push.py)
    healkit config get [SERVICE] [--json | --format json|yaml|toml] (get.py)
    healkit config watch [--count N] [--timeout SECONDS] [--json]   (watch.py)
    healkit config history SERVICE [--full] [--limit N] [--json]    (history.py)
    healkit config rollback SERVICE --to REVISION [--dry-run] [--json]  (history.py)
    healkit config simulate FILE|DIR [--against etcd|FILE] [--fail-if THRESHOLD ...]  (simulate.py)
    healkit status [--json]                                         (status.py)
    healkit demo [--duration SECONDS] [--concurrency N] [--json] [--etcd ENDPOINTS] [--trace]

The commands that talk to etcd take the connection options of
:mod:`healkit._cli.connection`. Every command keeps the conventions of
:mod:`healkit._cli.args`: data on stdout (one JSON document with ``--json``),
problems on stderr after it, each line prefixed ``healkit:``, exit status 0
(ok), 1 (invalid or failed), 2 (usage) or 130 (interrupted).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from healkit._cli import get, history, push, simulate, status, watch
from healkit._cli.args import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageParser,
    at_most,
    etcd_endpoints,
    plugin_name,
    positive_float,
    positive_int,
    write_config_error,
    write_json,
)
from healkit._cli.documents import assemble, load_source
from healkit._config.formats import load_file
from healkit._config.models import build_config
from healkit._demo import DEFAULT_DURATION, MAX_CONCURRENCY, MAX_DURATION
from healkit._errors import ConfigError, EtcdError, PluginError
from healkit._plugins import (
    check_plugin_sections,
    create_plugin_manager,
    describe_plugins,
    inspect_plugins,
)
from healkit._runtime import config_sections

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args, sys.stdout)
    except KeyboardInterrupt:
        sys.stderr.write("healkit: interrupted\n")
        return EXIT_INTERRUPTED
    except (PluginError, EtcdError) as error:
        sys.stderr.write(f"healkit: {error}\n")
        return EXIT_FAILED
    return status


def _parser() -> argparse.ArgumentParser:
    # Typed as the base class: argparse makes every subcommand parser a UsageParser too.
    parser: argparse.ArgumentParser = UsageParser(
        prog="healkit",
        description="Resilience for asyncio outbound calls.",
        epilog=(
            "Data goes to stdout (one JSON document with --json), problems to stderr."
            " Exit status: 0 ok, 1 invalid or failed, 2 usage error, 130 interrupted."
        ),
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"healkit {importlib.metadata.version('healkit')}",
        help="print healkit's version and exit",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    plugins = commands.add_parser(
        "plugins",
        help="list the plugins healkit loads, and their hooks",
        description=(
            "List the built-in and installed plugins healkit loads, with the hooks each"
            " implements; --check also checks their configuration sections."
        ),
    )
    plugins.add_argument("--json", action="store_true", help="print one JSON array")
    plugins.add_argument(
        "--check",
        action="store_true",
        help="also check each plugin's configuration sections; exit 1 if any plugin is broken",
    )
    _block_option(plugins)
    plugins.set_defaults(run=_plugins)

    config = commands.add_parser(
        "config",
        help="work with configuration documents",
        description="Validate configuration documents, and read and write them in etcd.",
    )
    config_commands = config.add_subparsers(required=True, metavar="ACTION")
    validate = config_commands.add_parser(
        "validate",
        help="validate a TOML, YAML or JSON document, or a directory of them",
        description=(
            "Validate a document (FILE), or a directory with one file per service and an"
            " optional defaults file (DIR, named as for 'config push'), with the installed"
            " plugins' sections. Exit status 0: valid, 1: invalid."
        ),
    )
    validate.add_argument(
        "source", metavar="FILE|DIR", help="a whole document, or a directory of one file a service"
    )
    validate.add_argument(
        "--json", action="store_true", help="print the verdict and every problem as one JSON object"
    )
    _block_option(validate)
    validate.set_defaults(run=_validate)
    push.add_parsers(config_commands, _block_option)
    get.add_parser(config_commands)
    watch.add_parser(config_commands, _block_option)
    history.add_parsers(config_commands, _block_option)
    simulate.add_command(config_commands, _block_option)
    status.add_parser(commands, _block_option)

    demo = commands.add_parser(
        "demo",
        help="watch healkit keep traffic alive through a scripted outage",
        description=(
            "Run a scripted outage against local servers and show how healkit keeps"
            " traffic alive (needs the demo extra)."
        ),
    )
    demo.add_argument(
        "--duration",
        type=at_most(positive_float, MAX_DURATION),
        default=DEFAULT_DURATION,
        help=f"seconds to run (default {DEFAULT_DURATION:g}, at most {MAX_DURATION:g})",
    )
    demo.add_argument(
        "--concurrency",
        type=at_most(positive_int, MAX_CONCURRENCY),
        default=16,
        help=f"concurrent callers (default 16, at most {MAX_CONCURRENCY})",
    )
    demo.add_argument(
        "--json", action="store_true", help="print only the final summary, as one JSON object"
    )
    demo.add_argument(
        "--etcd",
        type=etcd_endpoints,
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
        type=plugin_name,
        metavar="NAME",
        help="do not load this installed plugin (repeatable)",
    )


def _plugins(args: argparse.Namespace, out: TextIO) -> int:
    pm = inspect_plugins(block=args.block)
    problems = check_plugin_sections(pm) if args.check else {}
    infos = describe_plugins(pm, problems)
    broken = [info for info in infos if info.error is not None]
    if args.json:
        write_json(out, infos)
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
    if broken:
        names = ",".join(info.name for info in broken)
        sys.stderr.write(
            f"healkit: {len(broken)} broken plugin{'s' if len(broken) != 1 else ''}: every "
            f"client refuses to start until it is fixed or blocked "
            f"(HEALKIT_BLOCK_PLUGINS={names})\n"
        )
    return EXIT_FAILED if args.check and broken else EXIT_OK


def _validate(args: argparse.Namespace, out: TextIO) -> int:
    names: list[str] = []
    try:
        sections = config_sections(create_plugin_manager(block=args.block))
        names = [section.name for section in sections]
        document = (
            assemble(load_source(args.source))
            if Path(args.source).is_dir()
            else load_file(args.source)
        )
        services = sorted(build_config(document, sections, origin=args.source).services)
    except ConfigError as error:
        if args.json:
            issues = [{"path": i.path, "reason": i.reason} for i in error.issues]
            write_json(out, _verdict(args.source, [], names, issues))
        write_config_error(sys.stderr, error)
        return EXIT_FAILED
    if args.json:
        write_json(out, _verdict(args.source, services, names, []))
        return EXIT_OK
    listed = ", ".join(services) if services else "none"
    out.write(
        f"{args.source}: valid ({len(services)} services: {listed};"
        f" plugin sections: {', '.join(names) or 'none'})\n"
    )
    return EXIT_OK


def _verdict(
    source: str, services: list[str], sections: list[str], issues: list[dict[str, str]]
) -> dict[str, object]:
    """Return the JSON object ``config validate --json`` prints."""
    return {
        "source": source,
        "valid": not issues,
        "services": services,
        "sections": sections,
        "issues": issues,
    }


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    # The demo is an application on top of the library: its live view needs rich
    # (the `demo` extra), which the library never imports. Load it only here.
    try:
        from healkit._demo.app import DemoError, run_demo  # noqa: PLC0415
    except ModuleNotFoundError as missing:
        if missing.name != "rich":
            raise
        sys.stderr.write("healkit: the demo needs rich: pip install 'healkit[demo]'\n")
        return EXIT_USAGE

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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
