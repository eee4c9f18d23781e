"""The etcd commands of the ``healkit`` command line.

::

    healkit config push FILE|DIR [--dry-run] [--prune] [--json] [--block NAME ...]
    healkit config get [SERVICE] [--json | --format json|yaml|toml]
    healkit config diff FILE|DIR [--prune] [--json] [--block NAME ...]
    healkit config watch [--count N] [--timeout SECONDS] [--json] [--block NAME ...]
    healkit config history SERVICE [--full] [--limit N] [--json]
    healkit config rollback SERVICE --to REVISION [--dry-run] [--json] [--block NAME ...]
    healkit status [--json] [--block NAME ...]

Every command takes the connection options (``--endpoints``, ``--namespace``,
``--prefix``, the TLS files, ``--user``, ``--password-file``), each also read
from an environment variable (``HEALKIT_ETCD_ENDPOINTS``...). The keys are the
ones :class:`~healkit.etcd.EtcdSource` reads: ``<prefix><namespace>/defaults``,
``.../services/<service>`` and ``.../channels/<channel>/services/<service>``.

Writes are safe against concurrent writers: a push reads the namespace at one
revision, then writes every changed key in one transaction guarded by the
``mod_revision`` of every key it read (and by "no service key changed since"),
so a write made in between fails the push and nothing is written. Documents
are validated with the installed plugins' sections before anything is written,
and stored as canonical JSON (sorted keys, two-space indent).

The building blocks (:func:`read_namespace`, :func:`plan_push`,
:func:`commit`) are functions of their own so that tests can interleave a
concurrent write between the read and the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import functools
import getpass
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TextIO, final

import msgspec

from healkit._cli.args import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    close_names,
    etcd_endpoints,
    json_text,
    positive_float,
    positive_int,
    write_json,
)
from healkit._cli.entry_logs import routed_logs
from healkit._config.formats import (
    format_for_path,
    load_file,
    parse_document,
    require_yaml,
)
from healkit._config.models import ConfigSection, build_config, name_problem, service_name_issues
from healkit._config.validate import join_path
from healkit._errors import ConfigError, ConfigIssue, EtcdCompacted, EtcdError
from healkit._offload import off_loop
from healkit._plugins import create_plugin_manager
from healkit._routing.fleet import HEALTH, INSTANCES, InstanceView, parse_record_key
from healkit._runtime import config_sections
from healkit.etcd import Compare, DeleteOp, EtcdClient, KeyValue, PutOp, prefix_range_end
from healkit.etcd._source import DEFAULT_PREFIX, EtcdSource, etcd_prefix, key_role, stored_format

__all__ = [
    "Change",
    "Connection",
    "NamespaceState",
    "PushConflictError",
    "PushPlan",
    "add_commands",
    "build_issues",
    "canonical_json",
    "commit",
    "load_source",
    "plan_push",
    "read_namespace",
    "toml_dumps",
]

ENV_ENDPOINTS: Final = "HEALKIT_ETCD_ENDPOINTS"
ENV_NAMESPACE: Final = "HEALKIT_NAMESPACE"
ENV_PREFIX: Final = "HEALKIT_ETCD_PREFIX"
ENV_CA_FILE: Final = "HEALKIT_ETCD_CA_FILE"
ENV_CERT_FILE: Final = "HEALKIT_ETCD_CERT_FILE"
ENV_KEY_FILE: Final = "HEALKIT_ETCD_KEY_FILE"
ENV_USER: Final = "HEALKIT_ETCD_USER"
ENV_PASSWORD: Final = "HEALKIT_ETCD_PASSWORD"  # noqa: S105 - the variable's name, not a password
DEFAULT_NAMESPACE: Final = "default"

_SUMMARY: Final = 100
DEFAULT_HISTORY_LIMIT: Final = 100
MAX_TXN_OPS: Final = 128  # etcd's default --max-txn-ops
_REVISION_IN_ORIGIN: Final = re.compile(r"revision (\d+)\s*$")
_DEFAULTS: Final = "defaults"
_SERVICES: Final = "services/"
_TOP_KEYS: Final = frozenset({"defaults", "services"})
UNDECODABLE: Final = "healkit_undecodable"
"""``config get`` shows a key whose document cannot be decoded as ``{UNDECODABLE: reason}``."""

OutputFormat = Literal["json", "yaml", "toml"]


class PushConflictError(Exception):
    """etcd changed between the read and the write of a push: nothing was written."""


class _CommandError(Exception):
    """A failure the command reports as one line on stderr (exit status 1)."""


# -- connection -------------------------------------------------------------------------


@final
@dataclass(frozen=True, kw_only=True)
class Connection:
    """Where and how to reach etcd, and which namespace the commands work on."""

    endpoints: tuple[str, ...]
    namespace: str = DEFAULT_NAMESPACE
    prefix: str = DEFAULT_PREFIX
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    connect_timeout: float = 3.0
    request_timeout: float = 10.0

    @property
    def root(self) -> str:
        """The namespace's key prefix, ``<prefix><namespace>/``."""
        return etcd_prefix(self.namespace, self.prefix)

    def client(self) -> EtcdClient:
        """Return an :class:`EtcdClient` for these options (use it with ``async with``)."""
        return EtcdClient(
            self.endpoints,
            username=self.user,
            password=self.password,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            timeout=self.request_timeout,
            connect_timeout=self.connect_timeout,
        )


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("etcd connection")
    group.add_argument(
        "--endpoints",
        type=etcd_endpoints,
        metavar="URLS",
        help=f"etcd endpoints, comma-separated http(s)://HOST:PORT (${ENV_ENDPOINTS}; required)",
    )
    group.add_argument(
        "--namespace", help=f"the namespace (${ENV_NAMESPACE}; default {DEFAULT_NAMESPACE!r})"
    )
    group.add_argument(
        "--prefix", help=f"the root of healkit's keys (${ENV_PREFIX}; default {DEFAULT_PREFIX!r})"
    )
    group.add_argument(
        "--ca-file", metavar="PATH", help=f"CA bundle for etcd's TLS (${ENV_CA_FILE})"
    )
    group.add_argument(
        "--cert-file", metavar="PATH", help=f"client certificate for etcd (${ENV_CERT_FILE})"
    )
    group.add_argument(
        "--key-file", metavar="PATH", help=f"private key of the certificate (${ENV_KEY_FILE})"
    )
    group.add_argument("--user", help=f"etcd user name (${ENV_USER})")
    group.add_argument(
        "--password-file",
        metavar="PATH",
        help=f"read the user's password from this file (or set ${ENV_PASSWORD}; "
        "else it is asked for on a terminal)",
    )
    group.add_argument(
        "--password",
        help="the user's password on the command line: visible to every user of the machine "
        f"in the process list; prefer ${ENV_PASSWORD} or --password-file",
    )
    group.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=3.0,
        metavar="SECONDS",
        help="seconds to connect to one endpoint (default 3)",
    )
    group.add_argument(
        "--request-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="seconds one request may take (default 10)",
    )


def _resolve_connection(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Connection:
    """Combine the flags with the environment; usage errors exit with status 2."""
    env = os.environ

    def option(name: str, variable: str) -> str | None:
        value: str | None = getattr(args, name)
        return value or env.get(variable) or None

    endpoints: tuple[str, ...] | None = args.endpoints
    if endpoints is None:
        from_env = env.get(ENV_ENDPOINTS)
        if not from_env:
            parser.error(f"give the etcd endpoints with --endpoints or ${ENV_ENDPOINTS}")
        try:
            endpoints = etcd_endpoints(from_env)
        except argparse.ArgumentTypeError as error:
            parser.error(f"${ENV_ENDPOINTS}: {error}")
    namespace = option("namespace", ENV_NAMESPACE) or DEFAULT_NAMESPACE
    prefix = option("prefix", ENV_PREFIX) or DEFAULT_PREFIX
    try:
        etcd_prefix(namespace, prefix)
    except ValueError as error:
        parser.error(str(error))
    user = option("user", ENV_USER)
    password = _password(args, parser, user)
    connection = Connection(
        endpoints=endpoints,
        namespace=namespace,
        prefix=prefix,
        ca_file=option("ca_file", ENV_CA_FILE),
        cert_file=option("cert_file", ENV_CERT_FILE),
        key_file=option("key_file", ENV_KEY_FILE),
        user=user,
        password=password,
        connect_timeout=args.connect_timeout,
        request_timeout=args.request_timeout,
    )
    try:
        connection.client()  # checks the endpoints and reads the TLS files; opens nothing
    except (ValueError, OSError) as error:
        parser.error(str(error))
    return connection


def _password(
    args: argparse.Namespace, parser: argparse.ArgumentParser, user: str | None
) -> str | None:
    """Return the password: --password, --password-file, $HEALKIT_ETCD_PASSWORD, or a prompt."""
    password: str | None = args.password
    if password is None and args.password_file:
        try:
            text = Path(args.password_file).read_text(encoding="utf-8")
        except OSError as error:
            parser.error(f"cannot read --password-file {args.password_file}: {error.strerror}")
        password = text.rstrip("\r\n")
    if password is None:
        password = os.environ.get(ENV_PASSWORD)
    if user is None:
        if password is not None and (args.password is not None or args.password_file):
            parser.error(f"a password needs a user: give --user or ${ENV_USER}")
        return None
    if password is None:
        if sys.stdin is None or not sys.stdin.isatty():
            parser.error(
                f"etcd user {user!r} needs a password: set ${ENV_PASSWORD} or give --password-file"
            )
        password = getpass.getpass(f"etcd password for {user}: ")
    return password


# -- registration -----------------------------------------------------------------------

_Runner = Callable[[argparse.Namespace, Connection, TextIO], Coroutine[Any, Any, int]]


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_commands: argparse._SubParsersAction[argparse.ArgumentParser],
    block_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``healkit status`` to ``commands`` and the etcd actions to ``config_commands``."""
    push = config_commands.add_parser(
        "push",
        help="validate a document and write it to etcd in one transaction",
        description=(
            "Validate a document (FILE) or one file a service (DIR) before connecting, then"
            " validate the namespace as it will be and write every changed key in one"
            " transaction."
        ),
    )
    push.add_argument("source", metavar="FILE|DIR", help="a whole document, or one file a service")
    push.add_argument("--dry-run", action="store_true", help="print the diff; write nothing")
    push.add_argument(
        "--prune", action="store_true", help="delete the services etcd has but the document lacks"
    )
    _json_option(push, "print the keys changed (or that would change) as one JSON object")
    block_option(push)
    _etcd_command(push, _push)

    get = config_commands.add_parser(
        "get",
        help="print the namespace's document from etcd",
        description=(
            "Print the namespace's whole document (defaults and services) or one service's,"
            " as etcd holds it."
        ),
    )
    get.add_argument(
        "service", nargs="?", type=_service_name, help="print only this service's document"
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
    _etcd_command(get, _get)

    diff = config_commands.add_parser(
        "diff",
        help="show what push would write (exit 0: same, 1: different, 2: trouble)",
        description=(
            "Show what 'config push' would write, as a unified diff per key."
            " Exit status 0: etcd holds the document, 1: it differs, 2: trouble."
        ),
    )
    diff.add_argument("source", metavar="FILE|DIR", help="a whole document, or one file a service")
    diff.add_argument("--prune", action="store_true", help="also show the deletes of --prune")
    _json_option(diff, "print the keys that differ, with both documents, as one JSON object")
    block_option(diff)
    _etcd_command(diff, _diff, failure_status=EXIT_USAGE)

    watch = config_commands.add_parser(
        "watch",
        help="print each revision applied or rejected, live (Ctrl-C to stop)",
        description=(
            "Follow the namespace like an instance does and print one line per revision"
            " applied or document rejected, until Ctrl-C, --count or --timeout."
        ),
    )
    watch.add_argument(
        "--count", type=positive_int, metavar="N", help="stop after N revisions reported"
    )
    watch.add_argument(
        "--timeout", type=positive_float, metavar="SECONDS", help="stop after this many seconds"
    )
    _json_option(watch, "print one JSON object a line (JSON Lines) instead of text")
    block_option(watch)
    _etcd_command(watch, _watch)

    history = config_commands.add_parser(
        "history",
        help="list the revisions of a service's document still in etcd's history",
        description=(
            "List the versions of a service's document that etcd still keeps, newest first,"
            " and say where the history ends."
        ),
    )
    history.add_argument("service", type=_service_name, help="the service")
    history.add_argument("--full", action="store_true", help="print each document whole")
    history.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_HISTORY_LIMIT,
        metavar="N",
        help=f"list at most N versions (default {DEFAULT_HISTORY_LIMIT})",
    )
    _json_option(history, "print the versions, with their documents, as one JSON object")
    _etcd_command(history, _history)

    rollback = config_commands.add_parser(
        "rollback",
        help="write back the document a service had at a revision",
        description=(
            "Write back the document a service had at a revision, once the namespace is"
            " checked to be valid with it."
        ),
    )
    rollback.add_argument("service", type=_service_name, help="the service")
    rollback.add_argument(
        "--to",
        dest="revision",
        type=positive_int,
        required=True,
        metavar="REVISION",
        help="the etcd revision whose document to write back (required)",
    )
    rollback.add_argument("--dry-run", action="store_true", help="print the diff; write nothing")
    _json_option(rollback, "print what was (or would be) written as one JSON object")
    block_option(rollback)
    _etcd_command(rollback, _rollback)

    status = commands.add_parser(
        "status",
        help="etcd's status and every document of the namespace, checked",
        description=(
            "Show the etcd member that answers, every document of the namespace checked as"
            " instances check it, and fleet health per service. Exit status 1 when a"
            " document is invalid."
        ),
    )
    _json_option(status, "print one JSON object")
    block_option(status)
    _etcd_command(status, _status)


def _json_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--json", action="store_true", help=text)


def _service_name(text: str) -> str:
    """Return ``text`` if it is a valid service name (the configuration's rule), else fail."""
    problem = name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"invalid service name {text!r}: {problem}")
    return text


def _etcd_command(
    parser: argparse.ArgumentParser, runner: _Runner, *, failure_status: int = EXIT_FAILED
) -> None:
    _connection_options(parser)

    def run(args: argparse.Namespace, out: TextIO) -> int:
        connection = _resolve_connection(args, parser)
        err = sys.stderr
        try:
            with routed_logs(None):
                return asyncio.run(runner(args, connection, out))
        except KeyboardInterrupt:
            err.write("healkit: interrupted\n")
            return EXIT_INTERRUPTED
        except ConfigError as error:
            write_config_error(err, error)
        except EtcdError as error:
            err.write(f"healkit: {type(error).__name__}: {_one_line(error.message)}\n")
        except (_CommandError, PushConflictError) as error:
            err.write(f"healkit: {error}\n")
        return failure_status

    parser.set_defaults(run=run)


def write_config_error(err: TextIO, error: ConfigError) -> None:
    """Write one line for one issue; else a line saying how many, then one line per issue."""
    where = f"{error.origin}: " if error.origin else ""
    if len(error.issues) == 1:
        err.write(f"healkit: {where}{error.path}: {error.reason}\n")
        return
    err.write(f"healkit: {where}invalid ({len(error.issues)} problems):\n")
    err.writelines(f"  {issue.path}: {issue.reason}\n" for issue in error.issues)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- the namespace in etcd -----------------------------------------------------------------


@final
@dataclass(frozen=True)
class NamespaceState:
    """The configuration keys of a namespace as read at one revision."""

    root: str
    """The namespace's key prefix."""
    revision: int
    """The revision the keys were read at."""
    keys: dict[str, KeyValue]
    """Configuration keys relative to ``root`` (``defaults``, ``services/<name>``,
    ``channels/<channel>/services/<name>``), in key order."""

    def text(self, key: str) -> str | None:
        """Return the stored document of ``key`` (relative), or ``None`` if absent.

        For display: bytes that are not UTF-8 are replaced. Judge a document by
        :meth:`raw`, which keeps them (and so refuses them, as instances do).
        """
        kv = self.keys.get(key)
        return None if kv is None else kv.value.decode("utf-8", "replace")

    def raw(self, key: str) -> bytes | None:
        """Return the stored bytes of ``key`` (relative), or ``None`` if absent."""
        kv = self.keys.get(key)
        return None if kv is None else kv.value


async def read_namespace(client: EtcdClient, root: str) -> NamespaceState:
    """Read every configuration key under ``root`` at one revision."""
    result = await client.range_all(root, prefix=True)
    keys: dict[str, KeyValue] = {}
    for kv in result.kvs:
        relative = kv.key.decode("utf-8", "replace")[len(root) :]
        if key_role(relative)[0] != "other":
            keys[relative] = kv
    return NamespaceState(root=root, revision=result.revision, keys=keys)


def _decode_stored(data: str | bytes, origin: str) -> object:
    """Decode a stored document as instances do (:func:`stored_format`)."""
    return parse_document(data, fmt=stored_format(data), origin=origin)


def _path_of(key: str) -> str:
    kind, service, _ = key_role(key)
    return "$.defaults" if kind == "defaults" else join_path("$.services", service)


def _key_of_path(path: str, keys: Iterable[str]) -> str | None:
    """Return the key among ``keys`` whose document ``path`` lies in, or ``None``."""
    for key in keys:
        where = _path_of(key)
        if path == where or path.startswith((f"{where}.", f"{where}[")):
            return key
    return None


def canonical_json(document: object) -> str:
    """Return ``document`` as canonical JSON: sorted keys, two-space indent, final newline."""
    try:
        text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ConfigError([ConfigIssue("$", f"cannot be stored as JSON: {error}")]) from error
    return text + "\n"


# -- reading FILE|DIR -------------------------------------------------------------------------


def load_source(source: str) -> dict[str, object]:
    """Read a whole document (FILE) or one file per service (DIR).

    Returns:
        The documents by key relative to the namespace: ``defaults`` and
        ``services/<name>``.

    Raises:
        ConfigError: a file cannot be read or decoded, or the document has a
            key that etcd's layout has no place for.

    """
    path = Path(source)
    if path.is_dir():
        return _load_directory(path)
    document = load_file(path)
    if not isinstance(document, dict):  # pragma: no cover - load_file returns mappings
        raise ConfigError([ConfigIssue("$", "the document must be a mapping")], origin=source)
    issues = [
        ConfigIssue(f"$.{key}", "etcd's layout has no key for this part of the document")
        for key in document
        if key not in _TOP_KEYS
    ]
    services = document.get("services", {})
    if not isinstance(services, dict):
        issues.append(ConfigIssue("$.services", "must be a mapping of service documents"))
        services = {}
    # Each name becomes a key: refused if build_config would refuse it, never
    # written under another spelling (YAML's `on` is True) nor left out.
    issues += service_name_issues(services)
    if issues:
        raise ConfigError(issues, origin=source)
    documents: dict[str, object] = {}
    if "defaults" in document:
        documents[_DEFAULTS] = document["defaults"]
    documents.update((f"{_SERVICES}{name}", doc) for name, doc in services.items())
    return documents


def _load_directory(path: Path) -> dict[str, object]:
    documents: dict[str, object] = {}
    origins: dict[str, Path] = {}
    issues: list[ConfigIssue] = []
    for file in sorted(path.iterdir()):
        if file.name.startswith(".") or not file.is_file():
            continue
        try:
            format_for_path(file)
        except ConfigError:
            continue  # a README or a backup file: not a document
        if file.stem != _DEFAULTS and (named := service_name_issues([file.stem])):
            issues += [ConfigIssue(i.path, f"{i.reason} (file {file.name})") for i in named]
            continue
        key = _DEFAULTS if file.stem == _DEFAULTS else f"{_SERVICES}{file.stem}"
        if key in origins:
            issues.append(
                ConfigIssue(_path_of(key), f"both {origins[key].name} and {file.name} define it")
            )
            continue
        origins[key] = file
        documents[key] = load_file(file)
    if issues:
        raise ConfigError(issues, origin=os.fspath(path))
    if not documents:
        raise ConfigError(
            [ConfigIssue("$", "no .toml, .yaml, .yml or .json file in the directory")],
            origin=os.fspath(path),
        )
    return documents


def assemble(documents: Mapping[str, object]) -> dict[str, object]:
    """Build the whole document of keys ``defaults`` and ``services/<name>`` (others left out)."""
    whole: dict[str, object] = {}
    services: dict[str, object] = {}
    for key, value in documents.items():
        kind, service, _ = key_role(key)
        if kind == "defaults":
            whole["defaults"] = value
        elif kind == "service":
            services[service] = value
    whole["services"] = services
    return whole


def _sections(block: Sequence[str]) -> tuple[ConfigSection[Any], ...]:
    return config_sections(create_plugin_manager(block=list(block)))


# -- push -----------------------------------------------------------------------------------


@final
@dataclass(frozen=True)
class Change:
    """One key a push writes or deletes."""

    key: str
    """The key, relative to the namespace."""
    old: str | None
    """The document etcd holds now (``None``: the key is absent)."""
    new: str | None
    """The document written (``None``: the key is deleted)."""

    @property
    def action(self) -> str:
        """``created``, ``updated`` or ``deleted``."""
        if self.old is None:
            return "created"
        return "deleted" if self.new is None else "updated"


@final
@dataclass(frozen=True)
class PushPlan:
    """What a push writes, and the conditions under which it may."""

    root: str
    """The namespace's key prefix."""
    revision: int
    """The revision the namespace was read at."""
    changes: tuple[Change, ...]
    """The keys that differ from etcd, in key order."""
    kept: tuple[str, ...]
    """Service keys in etcd that the document lacks and that stay (no ``--prune``)."""
    guards: tuple[Compare, ...]
    """The comparisons of the transaction."""


def plan_push(
    state: NamespaceState,
    documents: Mapping[str, object],
    sections: Sequence[ConfigSection[Any]],
    *,
    prune: bool = False,
    origin: str = "",
) -> PushPlan:
    """Validate ``documents`` and return the writes that make etcd hold them.

    The pushed document is validated on its own, then as the namespace will
    be after the push (with the services it keeps).

    Raises:
        ConfigError: either document is invalid.

    """
    build_config(assemble(documents), sections, origin=origin)
    new_texts = {key: canonical_json(value) for key, value in documents.items()}
    kept: list[str] = []
    changes: list[Change] = []
    for key in sorted({*state.keys, *new_texts}):
        kind = key_role(key)[0]
        if kind not in {"defaults", "service"}:
            continue
        old, new = state.text(key), new_texts.get(key)
        if new is None and old is not None and not prune:
            kept.append(key)
            continue
        if old != new:
            changes.append(Change(key=key, old=old, new=new))
    _check_result(state, {c.key: c.new for c in changes}, sections)
    # No service key was created or written since the read, not even one we did not see.
    services = (state.root + _SERVICES).encode()
    guards: list[Compare] = [
        Compare(
            key=services,
            target="mod_revision",
            operator="<",
            operand=state.revision + 1,
            range_end=prefix_range_end(services),
        )
    ]
    # Each key written is as read (absent: mod_revision 0)...
    written = {c.key for c in changes}
    guards += [
        Compare.mod_revision(state.root + key, "==", kv.mod_revision)
        for key, kv in state.keys.items()
        if key in written or key == _DEFAULTS
    ]
    guards += [Compare.mod_revision(state.root + c.key, "==", 0) for c in changes if c.old is None]
    # ...and so is every other key read (which catches a concurrent delete), as far
    # as etcd's limit of operations per transaction (--max-txn-ops) allows.
    others = [
        Compare.mod_revision(state.root + key, "==", kv.mod_revision)
        for key, kv in state.keys.items()
        if key not in written and key_role(key)[0] == "service"
    ]
    if len(guards) + len(others) <= MAX_TXN_OPS:
        guards += others
    return PushPlan(
        root=state.root,
        revision=state.revision,
        changes=tuple(changes),
        kept=tuple(kept),
        guards=tuple(guards),
    )


def _check_result(
    state: NamespaceState,
    changed: Mapping[str, str | None],
    sections: Sequence[ConfigSection[Any]],
) -> None:
    """Validate the namespace as it will be once ``changed`` is written."""
    documents: dict[str, object] = {}
    issues: list[ConfigIssue] = []
    for key in sorted({*state.keys, *changed}):
        if key_role(key)[0] not in {"defaults", "service"}:
            continue
        data = changed[key] if key in changed else state.raw(key)
        if data is None:
            continue
        try:
            documents[key] = _decode_stored(data, state.root + key)
        except ConfigError as error:
            issues += [ConfigIssue(_path_of(key), i.reason) for i in error.issues]
    try:
        build_config(assemble(documents), sections, origin=state.root)
    except ConfigError as error:
        issues += error.issues
    if issues:
        keys = [k for k in {*state.keys, *changed} if key_role(k)[0] in {"defaults", "service"}]
        unchanged = [i for i in issues if _key_of_path(i.path, keys) not in changed]
        marked = [
            ConfigIssue(i.path, f"{i.reason} (in etcd, not in the pushed document)")
            if i in unchanged
            else i
            for i in issues
        ]
        raise ConfigError(marked, origin=f"{state.root} after the push")


async def commit(client: EtcdClient, plan: PushPlan) -> int:
    """Write the changes of ``plan`` in one transaction; return the new revision.

    Raises:
        PushConflictError: a key the plan read (or any service key) changed
            since the read; nothing was written.

    """
    operations: list[PutOp | DeleteOp] = [
        PutOp(key=(plan.root + c.key).encode(), value=c.new.encode())
        if c.new is not None
        else DeleteOp(key=(plan.root + c.key).encode())
        for c in plan.changes
    ]
    result = await client.txn(plan.guards, operations)
    if not result.succeeded:
        raise PushConflictError(
            f"etcd changed under {plan.root} after revision {plan.revision} while pushing; "
            "nothing was written: check the change (healkit config diff) and push again"
        )
    return result.revision


def _write_diff(out: TextIO, root: str, changes: Sequence[Change], revision: int) -> None:
    for change in changes:
        old = [] if change.old is None else _lines(change.old)
        new = [] if change.new is None else _lines(change.new)
        before = f"etcd:{root}{change.key}@{revision}" if change.old is not None else "/dev/null"
        after = f"new:{root}{change.key}" if change.new is not None else "/dev/null"
        out.writelines(difflib.unified_diff(old, new, before, after))


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines


def _checked_source(
    args: argparse.Namespace,
) -> tuple[dict[str, object], tuple[ConfigSection[Any], ...]]:
    """Read FILE|DIR and validate it on its own: its problems come before any etcd trouble."""
    documents = load_source(args.source)
    sections = _sections(args.block)
    build_config(assemble(documents), sections, origin=args.source)
    return documents, sections


def _plan_json(plan: PushPlan) -> dict[str, Any]:
    """Return the JSON object of ``config diff --json`` (``push --json`` adds to it)."""
    return {
        "prefix": plan.root,
        "revision": plan.revision,
        "changes": [
            {"key": c.key, "action": c.action, "old": c.old, "new": c.new} for c in plan.changes
        ],
        "kept": list(plan.kept),
    }


def _write_kept(plan: PushPlan) -> None:
    for key in plan.kept:
        sys.stderr.write(
            f"healkit: {plan.root}{key} is in etcd but not in the document:"
            " kept (--prune deletes it)\n"
        )


async def _push(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    documents, sections = _checked_source(args)
    written: int | None = None
    async with connection.client() as client:
        state = await read_namespace(client, connection.root)
        plan = plan_push(state, documents, sections, prune=args.prune, origin=args.source)
        if plan.changes and not args.dry_run:
            written = await commit(client, plan)
    count = len(plan.changes)
    if args.json:
        write_json(out, _plan_json(plan) | {"dry_run": args.dry_run, "written_revision": written})
    elif not plan.changes:
        out.write(f"nothing to push: etcd already holds this document (revision {plan.revision})\n")
    elif written is None:
        _write_diff(out, plan.root, plan.changes, plan.revision)
        out.write(f"dry run: {count} key{_s(count)} would change; nothing written\n")
    else:
        out.writelines(f"{change.action} {plan.root}{change.key}\n" for change in plan.changes)
        out.write(f"pushed {count} key{_s(count)} to {plan.root} at revision {written}\n")
    _write_kept(plan)
    return EXIT_OK


async def _diff(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    documents, sections = _checked_source(args)
    async with connection.client() as client:
        state = await read_namespace(client, connection.root)
    plan = plan_push(state, documents, sections, prune=args.prune, origin=args.source)
    if args.json:
        write_json(out, _plan_json(plan))
    else:
        _write_diff(out, plan.root, plan.changes, plan.revision)
    return EXIT_FAILED if plan.changes else EXIT_OK


def _s(count: int) -> str:
    return "" if count == 1 else "s"


# -- get ------------------------------------------------------------------------------------


async def _get(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    async with connection.client() as client:
        state = await read_namespace(client, connection.root)
    document: object
    undecodable: list[tuple[str, ConfigError]] = []
    if args.service is not None:
        key = _SERVICES + args.service
        data = state.raw(key)
        if data is None:
            raise _CommandError(
                f"no document for service {args.service!r} at {state.root}{key}"
                + close_names(args.service, _service_names(state.keys))
            )
        document = _decode_stored(data, state.root + key)
    else:
        documents: dict[str, object] = {}
        for key in state.keys:
            data = state.raw(key)
            if key_role(key)[0] not in {"defaults", "service"} or data is None:
                continue
            try:
                documents[key] = _decode_stored(data, state.root + key)
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
                f" {{{UNDECODABLE!r}: reason}}): {problem.path}: {_one_line(problem.reason)}\n"
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
            raise _CommandError("only a mapping can be written as TOML")
        return toml_dumps(document)
    return json_text(document)


_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


def toml_dumps(document: Mapping[str, Any]) -> str:
    """Write a decoded document as TOML (tables for mappings, inline arrays).

    Raises:
        _CommandError: the document holds a null, which TOML cannot represent.

    """
    lines: list[str] = []
    _toml_table(document, [], lines, header=False)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_table(
    table: Mapping[str, Any], path: list[str], lines: list[str], *, header: bool
) -> None:
    def is_table_array(value: object) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)

    scalars = [
        (k, v) for k, v in table.items() if not isinstance(v, dict) and not is_table_array(v)
    ]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    arrays = [(k, v) for k, v in table.items() if is_table_array(v)]
    if header and (scalars or not (tables or arrays)):
        lines += ["", f"[{_toml_dotted(path)}]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v, [*path, k])}" for k, v in scalars]
    for key, value in tables:
        _toml_table(value, [*path, key], lines, header=True)
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{_toml_dotted([*path, key])}]]"]
            _toml_table(item, [*path, key], lines, header=False)


def _toml_dotted(path: Sequence[str]) -> str:
    return ".".join(_toml_key(part) for part in path)


def _toml_key(key: object) -> str:
    text = str(key)
    return text if _BARE_KEY.fullmatch(text) else _toml_string(text)


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: object, path: Sequence[str]) -> str:  # noqa: PLR0911 - one return per type
    if value is None:
        raise _CommandError(f"TOML has no null: {'.'.join(path)} is null; use --format json")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, path) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(
            f"{_toml_key(k)} = {_toml_value(v, [*path, k])}" for k, v in value.items()
        )
        return "{" + items + "}"
    return _toml_string(str(value))


# -- history --------------------------------------------------------------------------------


@final
@dataclass(frozen=True)
class _HistoryEnd:
    """Why ``config history`` stopped: the first version, compaction, or ``--limit``."""

    reason: Literal["created", "compacted", "limit"]
    revision: int | None


async def _history(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    key = connection.root + _SERVICES + args.service
    versions: list[KeyValue] = []
    async with connection.client() as client:
        kv = await client.get(key)
        if kv is None:
            found = await client.range(connection.root + _SERVICES, prefix=True, keys_only=True)
            relative = (k.key.decode("utf-8", "replace")[len(connection.root) :] for k in found.kvs)
            raise _CommandError(
                f"no document for service {args.service!r} at {key}"
                + close_names(args.service, _service_names(relative))
            )
        end = await _walk_history(client, kv, versions, args.limit, connection.request_timeout)
    if args.json:
        write_json(
            out,
            {
                "key": key,
                "service": args.service,
                "versions": [_version_json(v) for v in versions],
                "ends": {"reason": end.reason, "revision": end.revision},
            },
        )
        return EXIT_OK
    out.write(f"{key} (newest first):\n")
    for version in versions:
        _write_version(out, version, full=args.full)
    if end.reason == "created":
        out.write(f"history ends: created at revision {end.revision}\n")
    elif end.reason == "compacted":
        where = f" at revision {end.revision}" if end.revision else ""
        out.write(f"history ends: compacted{where} (older versions are gone)\n")
    else:
        out.write(f"history goes on: older versions not listed (--limit {args.limit})\n")
    return EXIT_OK


async def _walk_history(
    client: EtcdClient, kv: KeyValue, versions: list[KeyValue], limit: int, seconds: float
) -> _HistoryEnd:
    """Append ``kv`` and the versions before it to ``versions``, at most ``limit`` of them."""
    key = kv.key
    while True:
        versions.append(kv)
        if kv.mod_revision == kv.create_revision:
            return _HistoryEnd("created", kv.create_revision)
        if len(versions) >= limit:
            return _HistoryEnd("limit", None)
        try:
            previous = await client.get(key, revision=kv.mod_revision - 1)
        except EtcdCompacted:
            return _HistoryEnd(
                "compacted",
                await _compact_revision(client, key.decode("utf-8", "replace"), seconds),
            )
        if previous is None:  # pragma: no cover - mod == create covers a first version
            return _HistoryEnd("created", kv.create_revision)
        kv = previous


def _version_json(kv: KeyValue) -> dict[str, Any]:
    """One version of ``config history --json``: the decoded document, or why it is not one."""
    document: object = None
    undecodable: str | None = None
    try:
        document = _decode_stored(kv.value, "")
    except ConfigError as error:
        undecodable = error.reason
    return {
        "revision": kv.mod_revision,
        "version": kv.version,
        "document": document,
        "undecodable": undecodable,
    }


def _service_names(keys: Iterable[str]) -> list[str]:
    """Return the services of ``keys`` (relative to the namespace)."""
    return [key_role(key)[1] for key in keys if key_role(key)[0] == "service"]


def _write_version(out: TextIO, kv: KeyValue, *, full: bool) -> None:
    text = kv.value.decode("utf-8", "replace")
    head = f"revision {kv.mod_revision}  version {kv.version}"
    if full:
        out.write(f"{head}:\n")
        out.writelines(f"    {line}\n" for line in text.splitlines())
        return
    try:
        summary = json.dumps(
            _decode_stored(kv.value, ""), separators=(",", ":"), ensure_ascii=False
        )
    except ConfigError as error:
        summary = f"(not a valid document: {error.reason})"
    if len(summary) > _SUMMARY:
        summary = summary[: _SUMMARY - 3] + "..."
    out.write(f"{head}  {summary}\n")


async def _compact_revision(client: EtcdClient, key: str, seconds: float) -> int | None:
    """Ask etcd where its history starts: a watch from revision 1 is canceled with it."""
    try:
        async with asyncio.timeout(seconds), client.watch(key, start_revision=1) as watch:
            async for _ in watch:  # events: the history was not compacted after all
                return None
    except EtcdCompacted as error:
        return error.compact_revision
    except (EtcdError, TimeoutError):
        return None  # only a detail of the message: not worth failing the command
    return None


# -- rollback -------------------------------------------------------------------------------


async def _rollback(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    relative = _SERVICES + args.service
    key = connection.root + relative
    sections = _sections(args.block)
    written: int | None = None
    async with connection.client() as client:
        state = await read_namespace(client, connection.root)
        if args.revision > state.revision:
            raise _CommandError(
                f"revision {args.revision} is in the future (etcd is at {state.revision})"
            )
        try:
            then = await client.get(key, revision=args.revision)
        except EtcdCompacted:
            compacted = await _compact_revision(client, key, connection.request_timeout)
            where = f" (history starts at revision {compacted})" if compacted else ""
            raise _CommandError(
                f"revision {args.revision} of {key} was compacted away{where}"
            ) from None
        if then is None:
            known = _service_names(state.keys)
            raise _CommandError(
                f"{key} did not exist at revision {args.revision}"
                + ("" if args.service in known else close_names(args.service, known))
            )
        current = state.keys.get(relative)
        restored = then.value.decode("utf-8", "replace")
        change = Change(key=relative, old=state.text(relative), new=restored)
        if change.old != change.new:
            _check_result(state, {relative: restored}, sections)
            if not args.dry_run:
                guard = Compare.mod_revision(
                    key, "==", 0 if current is None else current.mod_revision
                )
                result = await client.txn([guard], [PutOp(key=key.encode(), value=then.value)])
                if not result.succeeded:
                    raise PushConflictError(
                        f"{key} changed while rolling back; nothing was written:"
                        " look at it and try again"
                    )
                written = result.revision
    if args.json:
        write_json(
            out,
            {
                "key": key,
                "from_revision": then.mod_revision,
                "changed": change.old != change.new,
                "dry_run": args.dry_run,
                "old": change.old,
                "new": change.new,
                "written_revision": written,
            },
        )
    elif change.old == change.new:
        out.write(f"{key} already holds the document of revision {args.revision}\n")
    elif written is None:
        _write_diff(out, state.root, [change], state.revision)
        out.write("dry run: nothing written\n")
    else:
        out.write(
            f"rolled back {key} to its document of revision {then.mod_revision}"
            f" (now revision {written})\n"
        )
    return EXIT_OK


# -- status ---------------------------------------------------------------------------------


class _DocumentStatus(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    kind: str
    service: str | None
    channel: str | None
    mod_revision: int
    version: int
    valid: bool
    issues: list[dict[str, str]]


async def _status(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    sections = _sections(args.block)
    async with connection.client() as client:
        etcd = await client.status()
        state = await read_namespace(client, connection.root)
        health = await client.range_all(
            connection.root + HEALTH, prefix=True, revision=state.revision
        )
        instances = await client.range_all(
            connection.root + INSTANCES, prefix=True, revision=state.revision
        )
    problems = _namespace_issues(state, sections)
    views, unreadable = _instance_views(connection.root, instances.kvs)
    health_keys = [kv.key.decode("utf-8", "replace") for kv in health.kvs]
    fleet = _fleet_health(state, health_keys, views, invalid=problems.keys())
    rows = [
        _DocumentStatus(
            key=state.root + key,
            kind=key_role(key)[0],
            service=key_role(key)[1] or None,
            channel=key_role(key)[2] or None,
            mod_revision=kv.mod_revision,
            version=kv.version,
            valid=not problems.get(key),
            issues=[{"path": i.path, "reason": i.reason} for i in problems.get(key, [])],
        )
        for key, kv in state.keys.items()
    ]
    invalid = any(not row.valid for row in rows) or bool(problems.get(""))
    if args.json:
        report = {
            "etcd": {
                "endpoint": etcd.endpoint,
                "version": etcd.version,
                "revision": etcd.revision,
                "leader": f"{etcd.leader:x}",
                "member": f"{etcd.member_id:x}",
                "raft_term": etcd.raft_term,
                "db_size": etcd.db_size,
            },
            "namespace": connection.namespace,
            "prefix": state.root,
            "revision": state.revision,
            "valid": not invalid,
            "issues": [{"path": i.path, "reason": i.reason} for i in problems.get("", [])],
            "documents": rows,
            "fleet": fleet,
            "unreadable_instance_records": unreadable,
        }
        write_json(out, report)
        _write_invalid(rows, state.root, whole=bool(problems.get("")))
        return EXIT_FAILED if invalid else EXIT_OK
    leader = "no leader" if not etcd.leader else f"leader {etcd.leader:x}"
    if etcd.leader and etcd.leader == etcd.member_id:
        leader += " (this member)"
    out.write(f"etcd {etcd.endpoint}: version {etcd.version}, revision {etcd.revision}, {leader}\n")
    out.write(
        f"namespace {connection.namespace} ({state.root}), read at revision {state.revision}\n"
    )
    if not rows:
        out.write("  no documents\n")
    width = max((len(row.key) - len(state.root) for row in rows), default=0)
    for row in rows:
        relative = row.key[len(state.root) :]
        verdict = "valid" if row.valid else "INVALID"
        out.write(f"  {relative:<{width}}  revision {row.mod_revision:<6} {verdict}\n")
        out.writelines(f"      {i['path']}: {i['reason']}\n" for i in row.issues)
    out.writelines(
        f"  namespace INVALID: {issue.path}: {issue.reason}\n" for issue in problems.get("", [])
    )
    _write_fleet(out, fleet, time.time())
    out.writelines(
        f"  instance record {entry['key']} unreadable: {entry['reason']}\n" for entry in unreadable
    )
    _write_invalid(rows, state.root, whole=bool(problems.get("")))
    return EXIT_FAILED if invalid else EXIT_OK


def _write_invalid(rows: Sequence[_DocumentStatus], root: str, *, whole: bool) -> None:
    """Say on stderr why ``status`` exits with 1: which documents are invalid."""
    keys = [row.key[len(root) :] for row in rows if not row.valid]
    if whole:
        keys.append("(the namespace as a whole)")
    if keys:
        sys.stderr.write(f"healkit: {root}: invalid: {', '.join(keys)}\n")


def _instance_views(
    root: str, kvs: Sequence[KeyValue]
) -> tuple[list[InstanceView], list[dict[str, str]]]:
    """Decode the instances' own views; list the records that are not one (key, reason)."""
    views: list[InstanceView] = []
    unreadable: list[dict[str, str]] = []
    for kv in kvs:
        key = kv.key.decode("utf-8", "replace")
        try:
            views.append(msgspec.json.decode(kv.value, type=InstanceView))
        except msgspec.DecodeError as error:  # written by something else than healkit
            unreadable.append({"key": key[len(root) :], "reason": str(error)})
    return views, unreadable


def _fleet_health(
    state: NamespaceState,
    health_keys: Sequence[str],
    views: Sequence[InstanceView],
    *,
    invalid: Collection[str],
) -> dict[str, Any]:
    """Per service: its endpoint groups, who reports each endpoint out, where traffic goes.

    ``views`` are the instances' own (``instances/<instance>``): their local
    health, breaker states and traffic, for the services that share health.
    The services whose key is in ``invalid`` are left out: their endpoints
    and groups may be anything (they are listed as invalid instead).
    """
    reports: dict[tuple[str, str], list[str]] = {}
    for key in health_keys:
        record = parse_record_key(key[len(state.root) :])
        if record is not None:
            service, endpoint, instance = record
            reports.setdefault((service, endpoint), []).append(instance)
    view: dict[str, Any] = {}
    for key in state.keys:
        kind, service, _ = key_role(key)
        if kind != "service" or key in invalid:
            continue
        try:
            document = _decode_stored(state.raw(key) or b"", state.root + key)
        except ConfigError:
            continue
        if not isinstance(document, dict):
            continue
        routing = document.get("routing") if isinstance(document.get("routing"), dict) else {}
        groups = [list(document.get("endpoints") or [])]
        groups.extend(list(g) for g in (routing or {}).get("fallback_groups") or [])
        fleet = (routing or {}).get("fleet")
        quorum = int(fleet.get("quorum", 1)) if isinstance(fleet, dict) else None
        endpoints = [
            {
                "endpoint": e,
                "group": index,
                "reported_out_by": sorted(reports.get((service, e), [])),
            }
            for index, group in enumerate(groups)
            for e in group
        ]
        traffic = None
        for index, group in enumerate(groups):
            healthy = [
                e for e in group if quorum is None or len(reports.get((service, e), [])) < quorum
            ]
            if healthy:
                traffic = {"group": index, "endpoints": healthy}
                break
        seen_by = [
            {
                "instance": v.instance,
                "updated": v.updated,
                **msgspec.to_builtins(v.services[service]),
            }
            for v in views
            if service in v.services
        ]
        view[service] = {
            "quorum": quorum,
            "endpoints": endpoints,
            "traffic": traffic,
            "instances": sorted(seen_by, key=lambda entry: entry["instance"]),
        }
    return view


def _write_fleet(out: TextIO, fleet: Mapping[str, Any], now: float) -> None:
    for service, info in fleet.items():
        if not info["endpoints"]:
            continue
        shared = "fleet health off" if info["quorum"] is None else f"quorum {info['quorum']}"
        out.write(f"service {service} ({shared}):\n")
        for entry in info["endpoints"]:
            reporters = entry["reported_out_by"]
            seen = f"reported out by {', '.join(reporters)}" if reporters else "no report"
            out.write(f"  group {entry['group']}  {entry['endpoint']}  {seen}\n")
        traffic = info["traffic"]
        where = (
            "nowhere healthy"
            if traffic is None
            else (f"group {traffic['group']}: {', '.join(traffic['endpoints'])}")
        )
        out.write(f"  traffic now: {where}\n")
        for seen in info["instances"]:
            _write_instance(out, seen, now)


def _write_instance(out: TextIO, seen: Mapping[str, Any], now: float) -> None:
    """Write one instance's own view of a service: its traffic, then each endpoint."""
    group = seen["traffic_group"]
    where = (
        "nowhere usable (the primary group is tried anyway)"
        if group is None
        else f"group {group}: {', '.join(seen['traffic'])}"
    )
    age = max(now - seen["updated"], 0.0)
    out.write(f"  instance {seen['instance']} (as of {age:.0f} s ago): traffic to {where}\n")
    out.writelines(
        f"    group {entry['group']}  {entry['endpoint']}  {_local_health(entry, now)}\n"
        for entry in seen["endpoints"]
    )


def _local_health(entry: Mapping[str, Any], now: float) -> str:
    """Describe an endpoint as one instance sees it: usable or why not, and its breaker."""
    ejected_until, retry_at = entry["ejected_until"], entry["breaker_retry_at"]
    if entry["down"]:
        health = "down (probes)"
    elif ejected_until is not None and ejected_until > now:
        health = f"ejected ({ejected_until - now:.0f} s left)"
    elif entry["usable"]:
        health = "usable"
    elif entry["fleet_reports"]:
        health = f"avoided (reported out by {entry['fleet_reports']} instances)"
    else:
        health = "unusable"
    breaker = entry["breaker"]
    if breaker is None:
        return health
    health += f", breaker {breaker}"
    if retry_at is not None and retry_at > now:
        health += f" (admits calls again in {retry_at - now:.0f} s)"
    return health


def _namespace_issues(
    state: NamespaceState, sections: Sequence[ConfigSection[Any]]
) -> dict[str, list[ConfigIssue]]:
    """Return the issues of each key (``""``: issues no single key explains)."""
    problems: dict[str, list[ConfigIssue]] = {}
    decoded: dict[str, object] = {}
    for key in state.keys:
        try:
            decoded[key] = _decode_stored(state.raw(key) or b"", state.root + key)
        except ConfigError as error:
            problems.setdefault(key, []).extend(error.issues)
    base = {k: v for k, v in decoded.items() if key_role(k)[0] in {"defaults", "service"}}
    _attribute(build_issues(assemble(base), sections), base, problems)
    channels = sorted({key_role(k)[2] for k in decoded if key_role(k)[0] == "overlay"})
    for channel in channels:
        overlays = {
            _SERVICES + key_role(k)[1]: v
            for k, v in decoded.items()
            if key_role(k)[0] == "overlay" and key_role(k)[2] == channel
        }
        merged = dict(base)
        for key, overlay in overlays.items():
            below = merged.get(key, {})
            if isinstance(below, dict) and isinstance(overlay, dict):
                merged[key] = {**below, **overlay}
        found = build_issues(assemble(merged), sections)
        for issue in found:
            target = _key_of_path(issue.path, overlays)
            if target is not None:
                problems.setdefault(f"channels/{channel}/{target}", []).append(issue)
    return problems


def build_issues(document: object, sections: Sequence[ConfigSection[Any]]) -> list[ConfigIssue]:
    """Return the issues :func:`build_config` finds in ``document`` (empty if valid)."""
    try:
        build_config(document, sections)
    except ConfigError as error:
        return list(error.issues)
    return []


def _attribute(
    issues: Sequence[ConfigIssue],
    documents: Mapping[str, object],
    problems: dict[str, list[ConfigIssue]],
) -> None:
    for issue in issues:
        key = _key_of_path(issue.path, documents)
        problems.setdefault(key if key is not None else "", []).append(issue)


# -- watch ----------------------------------------------------------------------------------


@final
class _WatchReport:
    """The :class:`~healkit.ConfigSink` of ``healkit config watch``: validates and prints.

    It validates each document the source submits with the installed
    sections, like a runtime would, and prints one line per revision applied;
    the source's rejection events (key, revision, path, reason) are printed as
    they are logged. A rejection that the source could not pin on one key is
    printed once the source has finished with that revision (:meth:`flush`).
    With ``as_json``, each line is a JSON object instead (JSON Lines).
    """

    def __init__(
        self,
        sections: Sequence[ConfigSection[Any]],
        out: TextIO,
        count: int | None,
        *,
        as_json: bool = False,
    ) -> None:
        self.sections = tuple(sections)
        self._out = out
        self._count = count
        self._json = as_json
        self._start = 0
        self._accepted: dict[str, str] = {}
        self._pending: dict[int, ConfigError] = {}
        self._reported: set[int] = set()
        self.done = asyncio.Event()

    def started(self, root: str, document: object, revision: int) -> None:
        """Print the document the watch starts from, read at ``revision``, checked."""
        self._start = revision
        self._accepted = _flatten(document)
        issues = build_issues(document, self.sections)
        if self._json:
            self._write_json(
                {
                    "event": "watching",
                    "prefix": root,
                    "revision": revision,
                    "valid": not issues,
                    "issues": [{"path": i.path, "reason": i.reason} for i in issues],
                }
            )
            return
        count = len(issues)
        state = "valid" if not issues else f"INVALID ({count} problem{_s(count)})"
        self._out.write(f"watching {root} from revision {revision}: {state}\n")
        self._out.writelines(f"    {i.path}: {i.reason}\n" for i in issues)
        self._out.flush()

    async def submit(self, raw: object, *, origin: str) -> ConfigError | None:
        """Validate ``raw`` (in a worker thread); print the revision applied, or keep the error."""
        revision = _origin_revision(origin)
        try:
            await off_loop(functools.partial(build_config, raw, self.sections, origin=origin))
        except ConfigError as error:
            self._pending[revision] = error
            return error
        self._pending.pop(revision, None)
        now = _flatten(raw)
        before = self._accepted
        changed = [
            (key, _what_happened(key, before, now))
            for key in sorted({*now, *before})
            if now.get(key) != before.get(key)
        ]
        self._accepted = now
        if changed:  # else a resubmission without the keys just rejected
            self._line(
                revision,
                f"applied {', '.join(f'{key} ({action})' for key, action in changed)}",
                {"event": "applied", "changes": [{"key": k, "action": a} for k, a in changed]},
            )
        return None

    def reject(self, error: ConfigError) -> None:
        """Print a document the source could not decode at all."""
        for issue in error.issues:
            if self._json:
                self._write_json(_rejected(None, error.origin, issue.path, issue.reason))
            else:
                self._out.write(f"rejected {error.origin}: {issue.path}: {issue.reason}\n")
        self._out.flush()

    def emit(self, event: object) -> None:
        """Ignore the source's status events: its log events are printed instead."""
        del event

    def log(self, _method: str, event: Mapping[str, Any]) -> None:
        """Take one of the source's log events (those about documents and the connection)."""
        name = event.get("event")
        if name == "healkit.etcd_document_rejected":
            revision = int(event.get("revision", 0))
            self._pending.pop(revision, None)
            key, path, reason = (str(event.get(name)) for name in ("key", "path", "reason"))
            self._line(
                revision,
                f"rejected {key}: {path}: {reason}",
                _rejected(revision, key, path, reason),
            )
        elif name in {
            "healkit.etcd_unreachable",
            "healkit.etcd_reconnected",
            "healkit.etcd_compacted",
        }:
            details = ", ".join(f"{k}={v}" for k, v in event.items() if k != "event")
            sys.stderr.write(f"healkit: {str(name).removeprefix('healkit.')} ({details})\n")

    def flush(self, applied_revision: int) -> None:
        """Print the rejections of whole documents up to ``applied_revision``."""
        for revision in sorted(r for r in self._pending if r <= applied_revision):
            error = self._pending.pop(revision)
            for issue in error.issues:
                self._line(
                    revision,
                    f"rejected (the configuration in force stays): {issue.path}: {issue.reason}",
                    _rejected(revision, None, issue.path, issue.reason),
                )

    def _line(self, revision: int, text: str, record: dict[str, Any]) -> None:
        """Print what happened at ``revision``: ``text``, or ``record`` as JSON."""
        if self._json:
            self._write_json({**record, "revision": revision})
        else:
            self._out.write(f"revision {revision}: {text}\n")
        self._out.flush()
        if revision > self._start:
            self._reported.add(revision)
        if self._count is not None and len(self._reported) >= self._count:
            self.done.set()

    def _write_json(self, record: Mapping[str, Any]) -> None:
        self._out.write(json_text(record, indent=0))
        self._out.flush()


def _rejected(revision: int | None, key: str | None, path: str, reason: str) -> dict[str, Any]:
    """Return the JSON line of a rejection (``key``: ``None`` when no one key is to blame)."""
    return {"event": "rejected", "revision": revision, "key": key, "path": path, "reason": reason}


def _what_happened(key: str, before: Mapping[str, str], now: Mapping[str, str]) -> str:
    if key not in now:
        return "deleted"
    return "created" if key not in before else "updated"


def _flatten(document: object) -> dict[str, str]:
    """Return the key of each part of an assembled document, with its canonical JSON."""
    flat: dict[str, str] = {}
    if not isinstance(document, Mapping):
        return flat
    if "defaults" in document:
        flat[_DEFAULTS] = json.dumps(document["defaults"], sort_keys=True, default=str)
    services = document.get("services")
    if isinstance(services, Mapping):
        for name, value in services.items():
            flat[f"{_SERVICES}{name}"] = json.dumps(value, sort_keys=True, default=str)
    return flat


def _origin_revision(origin: str) -> int:
    match = _REVISION_IN_ORIGIN.search(origin)
    return 0 if match is None else int(match[1])


async def _watch(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    report = _WatchReport(_sections(args.block), out, args.count, as_json=args.json)
    started = False
    with routed_logs(report.log):
        async with connection.client() as client:
            source = EtcdSource(client, namespace=connection.namespace, prefix=connection.prefix)
            try:
                # --timeout bounds the whole command: a hung etcd too.
                async with asyncio.timeout(args.timeout):
                    document = await source.load()
                    report.started(connection.root, document, source.status.applied_revision)
                    started = True
                    await _watch_until_done(source, report)
            except TimeoutError:
                if not started:
                    endpoints = ", ".join(connection.endpoints)
                    raise _CommandError(
                        f"etcd ({endpoints}) did not answer within --timeout {args.timeout:g} s"
                    ) from None
                sys.stderr.write(f"healkit: stopped after {args.timeout:g} s\n")
    return EXIT_OK


async def _watch_until_done(source: EtcdSource, report: _WatchReport) -> None:
    """Run the source's watch and print what it applies, until the report is done."""
    task = asyncio.create_task(source.watch(report))
    try:
        await _follow(source, report)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _follow(source: EtcdSource, report: _WatchReport) -> None:
    """Flush the report after every change of the source's status, until it is done."""
    status = source.status
    while not report.done.is_set():
        changed = asyncio.ensure_future(source.wait_until(status.__ne__))
        done = asyncio.ensure_future(report.done.wait())
        try:
            await asyncio.wait({changed, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (changed, done):
                waiter.cancel()
            await asyncio.gather(changed, done, return_exceptions=True)
        status = source.status
        report.flush(status.applied_revision)
