"""How the etcd commands reach etcd, and how each one runs.

Every etcd command takes the connection options (``--endpoints``,
``--namespace``, ``--prefix``, the TLS files, ``--user``, ``--password-file``),
each also read from an environment variable (``HEALKIT_ETCD_ENDPOINTS``...),
and runs as one ``asyncio.run`` whose failures become one line on stderr
(:func:`etcd_command`).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO, final

from healkit._cli.args import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    CommandError,
    etcd_endpoints,
    one_line,
    positive_float,
    write_config_error,
)
from healkit._cli.entry_logs import routed_logs
from healkit._errors import ConfigError, EtcdError
from healkit.etcd import EtcdClient
from healkit.etcd._source import DEFAULT_PREFIX, etcd_prefix

__all__ = ["DEFAULT_NAMESPACE", "Connection", "Runner", "etcd_command"]

ENV_ENDPOINTS: Final = "HEALKIT_ETCD_ENDPOINTS"
ENV_NAMESPACE: Final = "HEALKIT_NAMESPACE"
ENV_PREFIX: Final = "HEALKIT_ETCD_PREFIX"
ENV_CA_FILE: Final = "HEALKIT_ETCD_CA_FILE"
ENV_CERT_FILE: Final = "HEALKIT_ETCD_CERT_FILE"
ENV_KEY_FILE: Final = "HEALKIT_ETCD_KEY_FILE"
ENV_USER: Final = "HEALKIT_ETCD_USER"
ENV_PASSWORD: Final = "HEALKIT_ETCD_PASSWORD"  # noqa: S105 - the variable's name, not a password
DEFAULT_NAMESPACE: Final = "default"


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


def connection_options(parser: argparse.ArgumentParser) -> None:
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


def resolve_connection(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Connection:
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


Runner = Callable[[argparse.Namespace, Connection, TextIO], Coroutine[Any, Any, int]]
"""An etcd command: its arguments, the connection, stdout; returns the exit status."""


def etcd_command(
    parser: argparse.ArgumentParser, runner: Runner, *, failure_status: int = EXIT_FAILED
) -> None:
    """Give ``parser`` the connection options and make ``runner`` its command.

    The command runs in one ``asyncio.run``, with healkit's log events routed
    nowhere (a command says what it has to say itself). A configuration
    error, an etcd error or a :class:`CommandError` is written on stderr and
    gives ``failure_status``; Ctrl-C gives :data:`EXIT_INTERRUPTED`.
    """
    connection_options(parser)

    def run(args: argparse.Namespace, out: TextIO) -> int:
        connection = resolve_connection(args, parser)
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
            err.write(f"healkit: {type(error).__name__}: {one_line(error.message)}\n")
        except CommandError as error:
            err.write(f"healkit: {error}\n")
        return failure_status

    parser.set_defaults(run=run)
