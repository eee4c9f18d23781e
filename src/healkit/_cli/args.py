"""Argument types, the parser class and the output conventions of the ``healkit`` commands.

The conventions every command keeps:

- stdout carries the command's data and nothing else; with ``--json`` that
  data is one JSON document (:func:`write_json`), or for ``config watch``,
  which runs live, one JSON object a line;
- stderr carries the problems, written after the data (``config watch``,
  which runs live, writes each as it comes): one line each, starting with
  ``healkit:``; the problems of an invalid document follow its line, indented;
- the exit status is :data:`EXIT_OK`, :data:`EXIT_FAILED`, :data:`EXIT_USAGE`
  or :data:`EXIT_INTERRUPTED`.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Callable, Iterable
from typing import Final, NoReturn, TextIO, TypeAlias, TypeVar

import msgspec
import yarl

from healkit._config.models import name_problem
from healkit._errors import ConfigError
from healkit._plugins import installed_plugin_names
from healkit._redact import without_userinfo

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "BlockOption",
    "CommandError",
    "Commands",
    "UsageParser",
    "at_most",
    "close_names",
    "etcd_endpoints",
    "json_option",
    "json_text",
    "one_line",
    "plugin_name",
    "plural",
    "positive_float",
    "positive_int",
    "service_name",
    "write_config_error",
    "write_json",
]

EXIT_OK: Final = 0
"""Success (``config diff``: no difference)."""
EXIT_FAILED: Final = 1
"""An invalid document, a failed operation (``config diff``: a difference)."""
EXIT_USAGE: Final = 2
"""A usage error: a missing or invalid argument, option or environment variable."""
EXIT_INTERRUPTED: Final = 130
"""Interrupted (Ctrl-C)."""

# argparse gives the type of add_subparsers() no public name.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # noqa: SLF001
"""What ``add_subparsers`` returns: a command module adds its parsers to it."""
BlockOption = Callable[[argparse.ArgumentParser], None]
"""Adds ``--block NAME`` (plugins not to load) to a parser."""

_PLUGIN_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class CommandError(Exception):
    """A failure the command reports as one line on stderr (exit status 1)."""


class UsageParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit status 2.

    ``healkit: MESSAGE (see 'healkit config get --help')``: in an incident the
    reason must not drown in a usage block. Subcommand parsers are of this
    class too (argparse makes them of their parent's class).
    """

    def error(self, message: str) -> NoReturn:
        """Write ``message`` as one line and exit with status 2."""
        self.exit(EXIT_USAGE, f"healkit: {' '.join(message.split())} (see '{self.prog} --help')\n")


def positive_float(text: str) -> float:
    """Parse a finite number > 0, or fail with a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """Parse a whole number >= 1, or fail with a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


N = TypeVar("N", int, float)


def at_most(parse: Callable[[str], N], maximum: N) -> Callable[[str], N]:
    """Return ``parse`` (:func:`positive_float`...), refusing values above ``maximum``."""

    def bounded(text: str) -> N:
        value = parse(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {text}")
        return value

    return bounded


def etcd_endpoints(text: str) -> tuple[str, ...]:
    """Parse comma-separated etcd endpoints: ``http(s)://HOST[:PORT]``, nothing more.

    Raises:
        argparse.ArgumentTypeError: no endpoint, or one that is not an http or
            https URL with a host, or one with credentials, a path, a query or
            a fragment.

    """
    endpoints = tuple(part.strip() for part in text.split(",") if part.strip())
    if not endpoints:
        raise argparse.ArgumentTypeError(f"no etcd endpoint in {text!r}")
    for endpoint in endpoints:
        problem = _endpoint_problem(endpoint)
        if problem is not None:
            shown = without_userinfo(endpoint)  # the message goes to terminals and CI logs
            raise argparse.ArgumentTypeError(f"invalid etcd endpoint {shown!r}: {problem}")
    return endpoints


def _endpoint_problem(endpoint: str) -> str | None:
    # Before parsing: a parser's message may quote the userinfo.
    if without_userinfo(endpoint) != endpoint:
        return "no credentials in the URL: use --user and --password-file"
    try:
        url = yarl.URL(endpoint)
        port = url.port
    except ValueError as error:
        return str(error)
    if url.scheme not in {"http", "https"} or not url.host or port is None:
        return "expected http(s)://HOST:PORT"
    if url.path not in {"", "/"} or url.query_string or url.fragment:
        return "no path, query or fragment"
    return None


def service_name(text: str) -> str:
    """Return ``text`` if it is a valid service name (the configuration's rule), else fail."""
    problem = name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"invalid service name {text!r}: {problem}")
    return text


def plugin_name(text: str) -> str:
    """Return ``text`` if a plugin of that name is installed (built-in or entry point).

    Raises:
        argparse.ArgumentTypeError: no such plugin; the message lists the
            installed ones.

    """
    installed = installed_plugin_names()
    if text in installed:
        return text
    shown = repr(text) if _PLUGIN_NAME.fullmatch(text) else "of that name"
    raise argparse.ArgumentTypeError(
        f"no installed plugin {shown}{close_names(text, installed)}"
        f" (installed: {', '.join(installed) or 'none'})"
    )


def close_names(name: str, known: Iterable[str]) -> str:
    """Return ``"; did you mean 'a' or 'b'?"`` for the names close to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=3)
    if not close:
        return ""
    return f"; did you mean {' or '.join(repr(c) for c in close)}?"


def json_text(document: object, *, indent: int = 2) -> str:
    """Return ``document`` as valid JSON with a final newline (``indent=0``: one line).

    Documents read from etcd or files are hostile: a key that is not a string
    becomes one (YAML's ``on`` is ``"True"``), a date its ISO form, and a
    float that JSON cannot hold (YAML's ``.nan``, ``.inf``) becomes ``null``,
    so the output always parses.
    """
    encoded = msgspec.json.encode(document, enc_hook=str)
    return msgspec.json.format(encoded, indent=indent).decode() + "\n"


def write_json(out: TextIO, document: object) -> None:
    """Write ``document`` to ``out`` as one JSON document (two-space indent, final newline)."""
    out.write(json_text(document))


def json_option(parser: argparse.ArgumentParser, text: str) -> None:
    """Add ``--json`` to ``parser``, with ``text`` as its help."""
    parser.add_argument("--json", action="store_true", help=text)


def write_config_error(err: TextIO, error: ConfigError) -> None:
    """Write one line for one issue; else a line saying how many, then one line per issue."""
    where = f"{error.origin}: " if error.origin else ""
    if len(error.issues) == 1:
        err.write(f"healkit: {where}{error.path}: {error.reason}\n")
        return
    err.write(f"healkit: {where}invalid ({len(error.issues)} problems):\n")
    err.writelines(f"  {issue.path}: {issue.reason}\n" for issue in error.issues)


def one_line(text: str) -> str:
    """Return ``text`` with every run of whitespace (newlines too) made one space."""
    return " ".join(text.split())


def plural(count: int) -> str:
    """Return ``"s"`` unless ``count`` is 1."""
    return "" if count == 1 else "s"
