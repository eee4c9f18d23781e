"""The ``healkit`` command line.

::

    healkit plugins [--json] [--block NAME ...]
    healkit config validate FILE [--block NAME ...]
    healkit demo [--duration SECONDS] [--concurrency N] [--json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Final, TextIO

import msgspec

from healkit._config import build_config
from healkit._config_formats import load_file
from healkit._errors import ConfigError, PluginError
from healkit._plugins import create_plugin_manager, describe_plugins
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
    except PluginError as error:
        sys.stderr.write(f"healkit: {error}\n")
        return EXIT_INVALID
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="healkit", description="Resilience for asyncio outbound calls."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    plugins = commands.add_parser("plugins", help="list the plugins healkit loads, and their hooks")
    plugins.add_argument("--json", action="store_true", help="print one JSON array")
    _block_option(plugins)
    plugins.set_defaults(run=_plugins)

    config = commands.add_parser("config", help="work with configuration documents")
    config_commands = config.add_subparsers(required=True, metavar="ACTION")
    validate = config_commands.add_parser("validate", help="validate a TOML, YAML or JSON document")
    validate.add_argument("file", help="the document to validate")
    _block_option(validate)
    validate.set_defaults(run=_validate)

    demo = commands.add_parser(
        "demo", help="watch healkit keep traffic alive through a scripted outage"
    )
    demo.add_argument(
        "--duration", type=_positive_float, default=30.0, help="seconds to run (default 30)"
    )
    demo.add_argument(
        "--concurrency", type=_positive_int, default=16, help="concurrent callers (default 16)"
    )
    demo.add_argument(
        "--json", action="store_true", help="print only the final summary, as one JSON object"
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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _plugins(args: argparse.Namespace, out: TextIO) -> int:
    infos = describe_plugins(create_plugin_manager(block=args.block))
    if args.json:
        out.write(msgspec.json.encode(infos).decode() + "\n")
        return EXIT_OK
    if not infos:
        out.write("no plugins installed\n")
        return EXIT_OK
    for info in infos:
        origin = f"{info.distribution} {info.version}" if info.distribution else info.source
        role = " (observer)" if info.observer else ""
        out.write(f"{info.name}{role}: {origin}\n")
        out.write(f"    hooks: {', '.join(info.hooks)}\n")
    return EXIT_OK


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
    from healkit._demo import run_demo  # noqa: PLC0415 - the demo pulls in rich; load it only here

    return run_demo(
        duration=args.duration, concurrency=args.concurrency, as_json=args.json, out=out
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
