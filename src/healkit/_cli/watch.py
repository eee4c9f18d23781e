"""``healkit config watch``: follow a namespace as an instance does, and say what happens.

::

    healkit config watch [--count N] [--timeout SECONDS] [--json] [--block NAME ...]

One line per revision applied or document rejected (one JSON object a line
with ``--json``), until Ctrl-C (exit status 130), ``--count`` or ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final, TextIO, final

from healkit._cli.args import (
    EXIT_OK,
    BlockOption,
    CommandError,
    Commands,
    json_option,
    json_text,
    plural,
    positive_float,
    positive_int,
)
from healkit._cli.connection import Connection, etcd_command
from healkit._cli.documents import DEFAULTS, SERVICES, build_issues, plugin_sections
from healkit._cli.entry_logs import routed_logs
from healkit._config.compact import opened
from healkit._config.models import ConfigSection, build_config
from healkit._errors import ConfigError
from healkit._offload import off_loop
from healkit.etcd._source import EtcdSource

__all__ = ["add_parser"]

_REVISION_IN_ORIGIN: Final = re.compile(r"revision (\d+)\s*$")


def add_parser(config_commands: Commands, block_option: BlockOption) -> None:
    """Add ``config watch`` to the ``config`` actions."""
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
    json_option(watch, "print one JSON object a line (JSON Lines) instead of text")
    block_option(watch)
    etcd_command(watch, _watch)


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
        state = "valid" if not issues else f"INVALID ({count} problem{plural(count)})"
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
            "healkit.etcd_watch_retrying",
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
        if self._count is None or revision <= self._start:
            return  # watching until stopped: nothing to count
        self._reported.add(revision)
        if len(self._reported) >= self._count:
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
    """Return the key of each part of an assembled document, with its canonical JSON.

    The etcd source submits its documents compact: each part is decoded here.
    """
    flat: dict[str, str] = {}
    if not isinstance(document, Mapping):
        return flat
    if "defaults" in document:
        flat[DEFAULTS] = json.dumps(opened(document["defaults"]), sort_keys=True, default=str)
    services = document.get("services")
    if isinstance(services, Mapping):
        for name, value in services.items():
            flat[f"{SERVICES}{name}"] = json.dumps(opened(value), sort_keys=True, default=str)
    return flat


def _origin_revision(origin: str) -> int:
    match = _REVISION_IN_ORIGIN.search(origin)
    return 0 if match is None else int(match[1])


async def _watch(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    report = _WatchReport(plugin_sections(args.block), out, args.count, as_json=args.json)
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
                    raise CommandError(
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
