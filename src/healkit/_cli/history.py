"""``healkit config history`` and ``healkit config rollback``: a service's past documents.

::

    healkit config history SERVICE [--full] [--limit N] [--json] [--raw]
    healkit config rollback SERVICE --to REVISION [--dry-run] [--json] [--raw] [--block NAME ...]

Both read etcd's own history of the service's key (``get`` at an older
revision), which ends where etcd compacted it. Secret settings are shown
redacted unless ``--raw`` (:mod:`healkit._cli.secrets`); a rollback writes
the document as it was, secrets included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from typing import Any, Final, Literal, TextIO, final

from healkit._cli.args import (
    EXIT_OK,
    BlockOption,
    CommandError,
    Commands,
    close_names,
    json_option,
    positive_int,
    service_name,
    write_json,
)
from healkit._cli.connection import Connection, etcd_command
from healkit._cli.documents import (
    SERVICES,
    check_after,
    decode_stored,
    plugin_sections,
    read_namespace,
    service_names,
)
from healkit._cli.push import Change, PushConflictError, write_diff
from healkit._cli.secrets import Redaction, raw_option
from healkit._errors import ConfigError, EtcdCompactedError, EtcdError
from healkit.etcd import Compare, EtcdClient, KeyValue, PutOp

__all__ = ["DEFAULT_HISTORY_LIMIT", "add_parsers"]

DEFAULT_HISTORY_LIMIT: Final = 100
_SUMMARY: Final = 100


def add_parsers(config_commands: Commands, block_option: BlockOption) -> None:
    """Add ``config history`` and ``config rollback`` to the ``config`` actions."""
    history = config_commands.add_parser(
        "history",
        help="list the revisions of a service's document still in etcd's history",
        description=(
            "List the versions of a service's document that etcd still keeps, newest first,"
            " and say where the history ends."
        ),
    )
    history.add_argument("service", type=service_name, help="the service")
    history.add_argument("--full", action="store_true", help="print each document whole")
    history.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_HISTORY_LIMIT,
        metavar="N",
        help=f"list at most N versions (default {DEFAULT_HISTORY_LIMIT})",
    )
    json_option(history, "print the versions, with their documents, as one JSON object")
    raw_option(history)
    etcd_command(history, _history)

    rollback = config_commands.add_parser(
        "rollback",
        help="write back the document a service had at a revision",
        description=(
            "Write back the document a service had at a revision, once the namespace is"
            " checked to be valid with it."
        ),
    )
    rollback.add_argument("service", type=service_name, help="the service")
    rollback.add_argument(
        "--to",
        dest="revision",
        type=positive_int,
        required=True,
        metavar="REVISION",
        help="the etcd revision whose document to write back (required)",
    )
    rollback.add_argument("--dry-run", action="store_true", help="print the diff; write nothing")
    json_option(rollback, "print what was (or would be) written as one JSON object")
    raw_option(rollback)
    block_option(rollback)
    etcd_command(rollback, _rollback)


@final
@dataclass(frozen=True)
class _HistoryEnd:
    """Why ``config history`` stopped: the first version, compaction, or ``--limit``."""

    reason: Literal["created", "compacted", "limit"]
    revision: int | None


async def _history(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    key = connection.root + SERVICES + args.service
    shown = Redaction(plugin_sections(()), raw=args.raw)
    versions: list[KeyValue] = []
    async with connection.client() as client:
        kv = await client.get(key)
        if kv is None:
            found = await client.range(connection.root + SERVICES, prefix=True, keys_only=True)
            relative = (k.key.decode("utf-8", "replace")[len(connection.root) :] for k in found.kvs)
            raise CommandError(
                f"no document for service {args.service!r} at {key}"
                + close_names(args.service, service_names(relative))
            )
        end = await _walk_history(client, kv, versions, args.limit, connection.request_timeout)
    if args.json:
        write_json(
            out,
            {
                "key": key,
                "service": args.service,
                "versions": [_version_json(v, shown) for v in versions],
                "ends": {"reason": end.reason, "revision": end.revision},
            },
        )
        return EXIT_OK
    out.write(f"{key} (newest first):\n")
    for version in versions:
        _write_version(out, version, shown, full=args.full)
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
        except EtcdCompactedError:
            return _HistoryEnd(
                "compacted",
                await _compact_revision(client, key.decode("utf-8", "replace"), seconds),
            )
        if previous is None:  # pragma: no cover - mod == create covers a first version
            return _HistoryEnd("created", kv.create_revision)
        kv = previous


def _version_json(kv: KeyValue, shown: Redaction) -> dict[str, Any]:
    """One version of ``config history --json``: the decoded document, or why it is not one."""
    document: object = None
    undecodable: str | None = None
    try:
        document = shown.document(decode_stored(kv.value, ""))
    except ConfigError as error:
        undecodable = error.reason
    return {
        "revision": kv.mod_revision,
        "version": kv.version,
        "document": document,
        "undecodable": undecodable,
    }


def _write_version(out: TextIO, kv: KeyValue, shown: Redaction, *, full: bool) -> None:
    head = f"revision {kv.mod_revision}  version {kv.version}"
    if full:
        text = shown.text(kv.value.decode("utf-8", "replace")) or ""
        out.write(f"{head}:\n")
        out.writelines(f"    {line}\n" for line in text.splitlines())
        return
    try:
        document = shown.document(decode_stored(kv.value, ""))
        summary = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
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
    except EtcdCompactedError as error:
        return error.compact_revision
    except (EtcdError, TimeoutError):
        return None  # only a detail of the message: not worth failing the command
    return None


# -- rollback -------------------------------------------------------------------------------


async def _rollback(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    relative = SERVICES + args.service
    key = connection.root + relative
    sections = plugin_sections(args.block)
    written: int | None = None
    async with connection.client() as client:
        state = await read_namespace(client, connection.root)
        if args.revision > state.revision:
            raise CommandError(
                f"revision {args.revision} is in the future (etcd is at {state.revision})"
            )
        try:
            then = await client.get(key, revision=args.revision)
        except EtcdCompactedError:
            compacted = await _compact_revision(client, key, connection.request_timeout)
            where = f" (history starts at revision {compacted})" if compacted else ""
            raise CommandError(
                f"revision {args.revision} of {key} was compacted away{where}"
            ) from None
        if then is None:
            known = service_names(state.keys)
            raise CommandError(
                f"{key} did not exist at revision {args.revision}"
                + ("" if args.service in known else close_names(args.service, known))
            )
        current = state.keys.get(relative)
        restored = then.value.decode("utf-8", "replace")
        change = Change(key=relative, old=state.text(relative), new=restored)
        if change.old != change.new:
            check_after(state, {relative: restored}, sections)
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
    shown = Redaction(sections, raw=args.raw)
    if args.json:
        write_json(
            out,
            {
                "key": key,
                "from_revision": then.mod_revision,
                "changed": change.old != change.new,
                "dry_run": args.dry_run,
                "old": shown.text(change.old),
                "new": shown.text(change.new),
                "written_revision": written,
            },
        )
    elif change.old == change.new:
        out.write(f"{key} already holds the document of revision {args.revision}\n")
    elif written is None:
        write_diff(out, state.root, [change], state.revision, shown)
        out.write("dry run: nothing written\n")
    else:
        out.write(
            f"rolled back {key} to its document of revision {then.mod_revision}"
            f" (now revision {written})\n"
        )
    return EXIT_OK
