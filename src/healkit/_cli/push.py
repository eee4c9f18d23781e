"""``healkit config push`` and ``healkit config diff``: write a document to etcd, or compare.

::

    healkit config push FILE|DIR [--dry-run] [--prune] [--json] [--raw] [--block NAME ...]
    healkit config diff FILE|DIR [--prune] [--json] [--raw] [--block NAME ...]

Writes are safe against concurrent writers: a push reads the namespace at one
revision, then writes every changed key in one transaction guarded by the
``mod_revision`` of every key it read (and by "no service key changed since"),
so a write made in between fails the push and nothing is written. Documents
are validated with the installed plugins' sections before anything is written,
and stored as canonical JSON (sorted keys, two-space indent). Secret settings
are shown redacted in diffs unless ``--raw``, and a document holding the
redaction mark in one is refused (:mod:`healkit._cli.secrets`).

The building blocks (:func:`~healkit._cli.documents.read_namespace`,
:func:`plan_push`, :func:`commit`) are functions of their own so that tests
can interleave a concurrent write between the read and the commit.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO, final

from healkit._cli.args import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    BlockOption,
    CommandError,
    Commands,
    json_option,
    plural,
    write_json,
)
from healkit._cli.connection import Connection, etcd_command
from healkit._cli.documents import (
    DEFAULTS,
    SERVICES,
    NamespaceState,
    assemble,
    canonical_json,
    check_after,
    load_source,
    plugin_sections,
    read_namespace,
)
from healkit._cli.secrets import Redaction, raw_option, refuse_redacted
from healkit._config.models import ConfigSection, build_config
from healkit.etcd import Compare, DeleteOp, EtcdClient, PutOp, prefix_range_end
from healkit.etcd._source import key_role

__all__ = [
    "Change",
    "PushConflictError",
    "PushPlan",
    "add_parsers",
    "commit",
    "plan_push",
    "write_diff",
]

MAX_TXN_OPS: Final = 128  # etcd's default --max-txn-ops


class PushConflictError(CommandError):
    """etcd changed between the read and the write: nothing was written."""


def add_parsers(config_commands: Commands, block_option: BlockOption) -> None:
    """Add ``config push`` and ``config diff`` to the ``config`` actions."""
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
    json_option(push, "print the keys changed (or that would change) as one JSON object")
    raw_option(push)
    block_option(push)
    etcd_command(push, _push)

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
    json_option(diff, "print the keys that differ, with both documents, as one JSON object")
    raw_option(diff)
    block_option(diff)
    etcd_command(diff, _diff, failure_status=EXIT_USAGE)


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
    check_after(state, {c.key: c.new for c in changes}, sections)
    # No service key was created or written since the read, not even one we did not see.
    services = (state.root + SERVICES).encode()
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
        if key in written or key == DEFAULTS
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


def write_diff(
    out: TextIO, root: str, changes: Sequence[Change], revision: int, shown: Redaction
) -> None:
    """Write each change as a unified diff, documents as ``shown`` shows them."""
    for change in changes:
        old_text, new_text = shown.text(change.old), shown.text(change.new)
        if old_text == new_text:
            out.write(f"{root}{change.key}: only secret settings change (--raw shows them)\n")
            continue
        old = [] if old_text is None else _lines(old_text)
        new = [] if new_text is None else _lines(new_text)
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
    sections = plugin_sections(args.block)
    refuse_redacted(documents, sections, args.source)
    build_config(assemble(documents), sections, origin=args.source)
    return documents, sections


def _plan_json(plan: PushPlan, shown: Redaction) -> dict[str, Any]:
    """Return the JSON object of ``config diff --json`` (``push --json`` adds to it)."""
    return {
        "prefix": plan.root,
        "revision": plan.revision,
        "changes": [
            {"key": c.key, "action": c.action, "old": shown.text(c.old), "new": shown.text(c.new)}
            for c in plan.changes
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
    shown = Redaction(sections, raw=args.raw)
    if args.json:
        write_json(
            out, _plan_json(plan, shown) | {"dry_run": args.dry_run, "written_revision": written}
        )
    elif not plan.changes:
        out.write(f"nothing to push: etcd already holds this document (revision {plan.revision})\n")
    elif written is None:
        write_diff(out, plan.root, plan.changes, plan.revision, shown)
        out.write(f"dry run: {count} key{plural(count)} would change; nothing written\n")
    else:
        out.writelines(f"{change.action} {plan.root}{change.key}\n" for change in plan.changes)
        out.write(f"pushed {count} key{plural(count)} to {plan.root} at revision {written}\n")
    _write_kept(plan)
    return EXIT_OK


async def _diff(args: argparse.Namespace, connection: Connection, out: TextIO) -> int:
    documents, sections = _checked_source(args)
    async with connection.client() as client:
        state = await read_namespace(client, connection.root)
    plan = plan_push(state, documents, sections, prune=args.prune, origin=args.source)
    shown = Redaction(sections, raw=args.raw)
    if args.json:
        write_json(out, _plan_json(plan, shown))
    else:
        write_diff(out, plan.root, plan.changes, plan.revision, shown)
    return EXIT_FAILED if plan.changes else EXIT_OK
