"""``healkit config get [SERVICE] [--format json|yaml|toml] [--raw]``: a namespace's document.

Secret settings are shown redacted unless ``--raw`` (:mod:`healkit._cli.secrets`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Final, Literal, TextIO

from healkit._cli.args import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    Commands,
    close_names,
    json_text,
    one_line,
    service_name,
)
from healkit._cli.connection import Connection, etcd_command
from healkit._cli.documents import (
    SERVICES,
    assemble,
    decode_stored,
    plugin_sections,
    read_namespace,
    service_names,
)
from healkit._cli.secrets import Redaction, raw_option
from healkit._cli.toml_writer import toml_dumps
from healkit._config.formats import require_yaml
from healkit._config.secrets import REDACTED
from healkit._errors import ConfigError
from healkit.etcd._source import key_role

__all__ = ["UNDECODABLE", "add_parser"]

UNDECODABLE: Final = "healkit_undecodable"
"""``config get`` shows a key whose document cannot be decoded as ``{UNDECODABLE: reason}``."""

OutputFormat = Literal["json", "yaml", "toml"]


def add_parser(config_commands: Commands) -> None:
    """Add ``config get`` to the ``config`` actions."""
    get = config_commands.add_parser(
        "get",
        help="print the namespace's document from etcd",
        description=(
            "Print the namespace's whole document (defaults and services) or one service's,"
            f" as etcd holds it, secret settings shown as {REDACTED} unless --raw."
        ),
    )
    get.add_argument(
        "service", nargs="?", type=service_name, help="print only this service's document"
    )
    output = get.add_mutually_exclusive_group()
    output.add_argument(
        "--format",
        choices=("json", "yaml", "toml"),
        default="json",
        help="the output format (default json)",
    )
    output.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        help="print the document as one JSON object (the default; same as --format json)",
    )
    raw_option(get)
    etcd_command(get, _get)


async def _get(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    shown = Redaction(plugin_sections(()), raw=args.raw)
    async with connection.client() as client:
        state = await read_namespace(client, connection.root)
    document: object
    undecodable: list[tuple[str, ConfigError]] = []
    if args.service is not None:
        key = SERVICES + args.service
        data = state.raw(key)
        if data is None:
            raise CommandError(
                f"no document for service {args.service!r} at {state.root}{key}"
                + close_names(args.service, service_names(state.keys))
            )
        document = shown.document(decode_stored(data, state.root + key))
    else:
        documents: dict[str, object] = {}
        for key in state.keys:
            data = state.raw(key)
            if key_role(key)[0] not in {"defaults", "service"} or data is None:
                continue
            try:
                documents[key] = shown.document(decode_stored(data, state.root + key))
            except ConfigError as error:
                # Show the others; mark this one where its document would be.
                documents[key] = {UNDECODABLE: error.reason}
                undecodable.append((key, error))
        document = assemble(documents)
    out.write(_render(document, args.format))
    if undecodable:
        for key, problem in undecodable:
            sys.stderr.write(
                f"healkit: {state.root}{key} cannot be decoded (shown as"
                f" {{{UNDECODABLE!r}: reason}}): {problem.path}: {one_line(problem.reason)}\n"
            )
        return EXIT_FAILED
    return EXIT_OK


def _render(document: object, fmt: OutputFormat) -> str:
    if fmt == "yaml":
        require_yaml("--format yaml")
        from healkit._config.yaml_format import dump_yaml  # noqa: PLC0415 - PyYAML: only for YAML

        return dump_yaml(document)
    if fmt == "toml":
        if not isinstance(document, Mapping):  # pragma: no cover - documents are mappings
            raise CommandError("only a mapping can be written as TOML")
        return toml_dumps(document)
    return json_text(document)
